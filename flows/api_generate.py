"""One request's rows on the engine, seen from the event loop: submission, waiting (with disconnect
checks), OpenAI's response and chunk shapes, and which exception becomes which HTTP status."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi import Request
from fastapi.responses import JSONResponse

from adaptflow.system import Prepared, PromptTooLong
from components.registry import RegistryError, RegistryIntegrityError
from components.serving.engine import Completion, QueueFull, RequestTimeout
from components.serving.grammar import GrammarError
from components.serving.sampling import SamplingParams, TokenChoice
from flows.api_requests import Limits, error

log = logging.getLogger(__name__)


class ClientGone(Exception):
    pass


class Submission:
    """The n rows of one request; their events arrive on an asyncio queue."""

    def __init__(self, system, prepared: Prepared, params: list[SamplingParams], use_adapter: bool, limits: Limits):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.system, self.prepared, self.started = system, prepared, time.monotonic()
        self.use_adapter = use_adapter
        self.give_up_s = limits.request_timeout_s + 30
        self.rows = []
        try:
            for i, p in enumerate(params):
                self.rows.append(system.submit(
                    prepared, p, lambda ev: loop.call_soon_threadsafe(self.queue.put_nowait, ev),
                    use_adapter=use_adapter, index=i, timeout_s=limits.request_timeout_s,
                    max_context=limits.max_context))
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        for row in self.rows:
            row.cancel()

    async def events(self, request: Request | None = None) -> AsyncIterator[tuple]:
        """Every event until each row is done or failed; with `request`, a client that went away
        cancels the rows (non-streaming requests: a streaming response is cancelled by Starlette)."""
        pending, checked = len(self.rows), time.monotonic()
        while pending:
            if time.monotonic() - self.started > self.give_up_s:  # the engine enforces the timeout; this is a backstop
                self.cancel()
                raise RequestTimeout("no answer from the engine within the request timeout")
            try:
                event = await asyncio.wait_for(self.queue.get(), 0.25)
            except TimeoutError:
                event = None
            if request is not None and time.monotonic() - checked > 0.25:  # deltas may never pause
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel()
                    raise ClientGone()
            if event is not None:
                pending -= event[0] != "delta"
                yield event

    async def completions(self, request: Request) -> list[Completion]:
        done: dict[int, Completion] = {}
        async for kind, index, *payload in self.events(request):
            if kind == "error":
                self.cancel()
                raise payload[0]
            if kind == "done":
                done[index] = payload[0]
        return [done[i] for i in range(len(self.rows))]


def failure(exc: BaseException, param: str = "messages") -> JSONResponse:
    """The HTTP answer for an exception raised while loading, preparing or generating."""
    if isinstance(exc, PromptTooLong):
        return error(400, str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, GrammarError):
        return error(400, str(exc), param="response_format", code="invalid_schema")
    if isinstance(exc, QueueFull):
        return error(429, f"server busy: {exc}", "rate_limit_error", code="queue_full",
                     headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, RequestTimeout):
        return error(504, f"{exc}; ask for fewer tokens or retry later", "timeout_error", code="timeout")
    if isinstance(exc, RegistryIntegrityError):
        return error(500, f"the model failed its integrity check: {exc}", "server_error", param="model",
                     code="integrity_error")
    if isinstance(exc, RegistryError):
        return error(404, f"model not found: {exc}. GET /v1/models lists the registered systems", param="model",
                     code="model_not_found")
    if isinstance(exc, ValueError):
        return error(400, str(exc))
    log.error("request failed", exc_info=exc)
    return error(500, f"{type(exc).__name__}: {exc}", "server_error")


def usage(prompt_tokens: int, done: list[Completion]) -> dict:
    completion = sum(d.completion_tokens for d in done)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def timings(sub: Submission, done: list[Completion]) -> dict:
    """Our extension on every answer: where the time went (the chat page shows it)."""
    total = (time.monotonic() - sub.started) * 1000
    return {"system": sub.system.ref, "retrieval_ms": sub.prepared.retrieval_ms,
            "generation_ms": round(total, 1), "queue_ms": round(max((d.queue_s for d in done), default=0) * 1000, 1),
            "ttft_ms": round(min((d.ttft_s for d in done), default=0) * 1000, 1)}


def chat_logprobs(tokenizer, choices: list[TokenChoice] | None) -> dict | None:
    if choices is None:
        return None

    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [entry(c.token, c.logprob) | {"top_logprobs": [entry(t, lp) for t, lp in c.top]}
                        for c in choices]}


def text_logprobs(tokenizer, choices: list[TokenChoice] | None,
                  echoed: tuple[list[int], list[TokenChoice | None]] | None = None) -> dict | None:
    """OpenAI's legacy `logprobs` object. With `echoed` (the prompt's ids and their scores, `echo`), the prompt's
    tokens come first, the first of them with null logprob and null top_logprobs (nothing comes before it)."""
    if choices is None and echoed is None:
        return None
    ids, scores = echoed or ([], [])
    pairs = [*zip(ids, scores, strict=True), *((c.token, c) for c in choices or [])]
    tokens = [tokenizer.decode([t]) for t, _ in pairs]
    return {"tokens": tokens, "token_logprobs": [c.logprob if c else None for _, c in pairs],
            "text_offset": list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=0)) if tokens else [],
            "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in c.top} if c else None for _, c in pairs]}


def scored_only(prepared: Prepared, logprobs: bool) -> Completion:
    """The choice of a `max_tokens: 0` request (echo): nothing generated."""
    return Completion("", [], [] if logprobs else None, "length", len(prepared.ids), 0, 0.0, 0.0, 0.0)


def prepare_completion(system, prompt: str | list[int], ext) -> Prepared:
    """A completion prompt as the model reads it: text (retrieved chunks before it, if asked for) or token ids."""
    if isinstance(prompt, str):
        return system.prepare_text(prompt, use_retrieval=bool(ext.retrieval), top_k=ext.top_k)
    return system.prepare_ids(prompt)


def with_stop_token(done: Completion, echo: bool) -> list[TokenChoice] | None:
    """A completion's token choices; with echo, a generation that ended on the end-of-sequence token carries it last,
    as vLLM's do: lm-eval's loglikelihood reads `token_logprobs[ctxlen:-1]` of echo + max_tokens 1, so the prompt's
    last token must not be the one dropped. Without echo the tokens join to the text, as before."""
    if echo and done.logprobs is not None and done.stop_choice is not None:
        return [*done.logprobs, done.stop_choice]
    return done.logprobs


def citations(prepared: Prepared) -> list[dict]:
    """Our citations; `chunk_ref` is the chunk id as a string (ids are 64-bit; JavaScript numbers are not)."""
    return [asdict(c) | {"chunk_ref": str(c.chunk_id)} for c in prepared.citations]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
