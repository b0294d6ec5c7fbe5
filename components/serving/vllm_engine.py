"""Generation on a vLLM server: the same rows the built-in engine takes, sent to vLLM's /v1/completions.

`adaptflow serve --engine vllm` keeps everything around generation in Adaptflow (the chat template, retrieval,
citations, abstention, NAME@REF, /metrics) and hands vLLM the exact prompt the built-in engine would read: the
row's token ids. Each row streams on a thread of its own (vLLM does the batching); its events are the built-in
engine's (components.serving.engine.Row): ("delta", index, text, [TokenChoice]), ("done", index, Completion),
("error", index, exception). LoRA adapters are loaded into the running server through /v1/load_lora_adapter
(the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and unloaded through /v1/unload_lora_adapter.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import httpx

from components.serving.engine import Cancelled, Completion, QueueFull, RequestTimeout, Row
from components.serving.sampling import TokenChoice

__all__ = ["VllmEngine", "VllmError", "VllmModel"]

TOKEN_ID_PREFIX = "token_id:"  # vLLM's spelling of a token with return_tokens_as_token_ids


class VllmError(RuntimeError):
    """vLLM answered with an error, or could not be reached (the message says which and what to do)."""


@dataclass(frozen=True)
class VllmModel:
    """The base model a vLLM server serves: its served name and the folder or hub id it loaded (`root`)."""

    name: str
    root: str
    max_model_len: int | None = None


class VllmEngine:
    """A client of one vLLM server. `submit(row, model)` streams one row; at most `max_batch + max_queue`
    rows are in flight at once (past that: QueueFull, a 429, as the built-in engine)."""

    def __init__(self, url: str, max_in_flight: int = 80, api_key: str | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(30.0, read=None),
                                   limits=httpx.Limits(max_connections=max_in_flight + 8))
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()

    # --- the server --------------------------------------------------------------------------

    def base(self) -> VllmModel:
        """The served base model (the entry of /v1/models without a parent; LoRA adapters have one)."""
        cards = self._get("/v1/models")["data"]
        bases = [c for c in cards if not c.get("parent")]
        if not bases:
            raise VllmError(f"{self.url}/v1/models lists no base model ({cards})")
        card = bases[0]
        return VllmModel(card["id"], str(card.get("root") or card["id"]), card.get("max_model_len"))

    def loras(self) -> set[str]:
        return {c["id"] for c in self._get("/v1/models")["data"] if c.get("parent")}

    def load_lora(self, name: str, path: str) -> None:
        """Load a peft LoRA folder under `name`; a name already loaded is kept as it is."""
        if name in self.loras():
            return
        r = self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if r.status_code == 404:
            raise VllmError(f"{self.url} has no /v1/load_lora_adapter: start vLLM with --enable-lora and the "
                            "environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`--launch` does both)")
        if r.status_code != 200 and "already" not in r.text:
            raise VllmError(f"vLLM refused the adapter {path} as {name!r}: {_message(r)}")

    def unload_lora(self, name: str) -> None:
        r = self.client.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code not in (200, 400, 404):  # 400/404: not loaded (evicted, or a restarted server)
            raise VllmError(f"vLLM could not unload {name!r}: {_message(r)}")

    def _get(self, path: str) -> dict:
        try:
            r = self.client.get(path)
        except httpx.TransportError as exc:
            raise VllmError(f"no vLLM server at {self.url} ({exc}); start one, or use --launch") from None
        if r.status_code != 200:
            raise VllmError(f"GET {self.url}{path}: {_message(r)}")
        return r.json()

    # --- rows --------------------------------------------------------------------------------

    def submit(self, row: Row, model: str) -> Row:
        """Stream `row` from vLLM's model `model` (the base's served name, or a loaded LoRA's)."""
        if row.params.grammar is not None:
            raise ValueError("response_format json_object / json_schema is not supported with --engine vllm yet; "
                             "send response_format text, or serve with --engine builtin")
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise QueueFull(self._in_flight, 1)
            self._in_flight += 1
        row.submitted = row.admitted = time.monotonic()
        threading.Thread(target=self._run, args=(row, model), daemon=True, name="adaptflow-vllm-row").start()
        return row

    def body(self, row: Row, model: str) -> dict:
        """vLLM's /v1/completions body for one row: its token ids as the prompt, OpenAI's sampling fields, and the
        built-in engine's end-of-sequence ids as stop tokens."""
        p = row.params
        body = {"model": model, "prompt": list(row.prompt_ids), "max_tokens": p.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": p.temperature,
                "stop_token_ids": sorted(row.eos), "skip_special_tokens": True}
        if p.temperature > 0:
            body["top_p"] = p.top_p
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.logprobs:
            body |= {"logprobs": p.top_logprobs, "return_tokens_as_token_ids": True}
        return body

    def _run(self, row: Row, model: str) -> None:
        try:
            self._stream(row, model)
        except Exception as exc:  # noqa: BLE001 - the row fails alone; the server goes on
            row.fail(exc)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _stream(self, row: Row, model: str) -> None:
        pieces, choices, finish, usage = [], [], "length", {}
        try:
            with self.client.stream("POST", "/v1/completions", json=self.body(row, model)) as r:
                if r.status_code != 200:
                    r.read()
                    raise _refusal(r)
                for line in r.iter_lines():
                    if row.cancelled.is_set():
                        raise Cancelled("the client went away")
                    if row.expired(time.monotonic()):
                        raise RequestTimeout("the request timed out while generating (on vLLM)")
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        new = (_token_choices(choice.get("logprobs"), row.params.top_logprobs)
                               if row.params.logprobs else [])
                        choices += new
                        if choice.get("text"):
                            row.first_token = row.first_token or time.monotonic()
                            pieces.append(choice["text"])
                            row.put(("delta", row.index, choice["text"], new))
                        finish = choice.get("finish_reason") or finish
        except httpx.TransportError as exc:
            raise VllmError(f"lost the vLLM server at {self.url} ({type(exc).__name__}: {exc})") from None
        now = time.monotonic()
        row.finished = True
        row.put(("done", row.index, Completion(
            "".join(pieces), [], choices if row.params.logprobs else None, "stop" if finish == "stop" else "length",
            usage.get("prompt_tokens", len(row.prompt_ids)), usage.get("completion_tokens", len(choices)),
            0.0, (row.first_token or now) - row.submitted, now - row.submitted)))


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"
    err = body.get("error", body) if isinstance(body, dict) else body
    return f"HTTP {r.status_code}: {err.get('message', err) if isinstance(err, dict) else err}"


def _refusal(r: httpx.Response) -> Exception:
    """vLLM's 4xx is the request's fault (a 400 here too); anything else is the server's."""
    if 400 <= r.status_code < 500:
        return ValueError(f"vLLM refused the request: {_message(r)}")
    return VllmError(f"vLLM failed the request: {_message(r)}")


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise VllmError(f"vLLM returned the token {token!r} without its id; it needs return_tokens_as_token_ids")
    return int(token[len(TOKEN_ID_PREFIX):])


def _token_choices(logprobs: dict | None, top_n: int) -> list[TokenChoice]:
    """vLLM's legacy completion logprobs (tokens as `token_id:N`) -> the engine's TokenChoice list; vLLM adds the
    chosen token to its top list, so the list is cut back to the `top_n` most likely."""
    if not logprobs:
        return []
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    return [TokenChoice(_token_id(t), float(lp), sorted(((_token_id(k), float(v)) for k, v in (top or {}).items()),
                                                         key=lambda kv: -kv[1])[:top_n])
            for t, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True)]
