"""One loading path for a combined system: shared base model + adapter + retriever + template.

Every consumer (evaluation, `adaptflow query`, the HTTP server, the Prefect `query` deployment)
builds a `System` here. How an adapter meets its base depends on what the method changes:

- peft tuners that inject layers (lora, dora, qlora, adalora, ia3, loha, lokr) share ONE copy of
  the base: adapters go into one PeftModel under content-derived names and are switched with
  `set_adapter` under the base's lock, so a request never sees another system's adapter and the
  base is never reloaded. peft cannot mix tuner types in one PeftModel, so each tuner type has
  its own lane: the first copy takes the first type that comes, another type loads a second copy.
- prompt learning (prompt_tuning, p_tuning, prefix_tuning) wraps the shared base in the system's
  own PeftModel and generates with the lane's injected adapters disabled.
- selective / full change base weights: the system gets a private copy of the base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.models import ResolvedModel, load_model, load_tokenizer, resolve_model
from components.prompting import last_user_text, question_messages, with_context
from components.spec import PROMPT_LEARNING, WEIGHT_METHODS, BaseModelSpec, TaskSpec

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_weights.safetensors")
SNIPPET_CHARS = 240


@dataclass
class Citation:
    n: int
    doc_id: str
    title: str
    snippet: str
    score: float
    chunk_id: int


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Answer:
    """What `adaptflow query --json`, `System.query` and the server's response carry."""

    answer: str
    citations: list[Citation]
    system: str
    latency_ms: float
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    usage: Usage | None = None
    finish_reason: str = "stop"  # "length" when max_new_tokens cut the answer

    def to_dict(self) -> dict:
        return asdict(self)


# --- shared bases ----------------------------------------------------------------------------


@dataclass(eq=False)
class BaseHandle:
    """One loaded copy of a base model and the peft adapters injected into it (one tuner type)."""

    resolved: ResolvedModel
    model: object
    tokenizer: object
    lock: threading.RLock = field(default_factory=threading.RLock)
    peft_type: str | None = None  # the tuner type this copy's PeftModel holds (claimed at selection)
    peft: object | None = None  # the PeftModel holding this lane's adapters, by name
    adapters: set[str] = field(default_factory=set)


_BASES: dict[tuple, list[BaseHandle]] = {}
_BASES_LOCK = threading.Lock()


def _base_key(spec: BaseModelSpec, resolved: ResolvedModel) -> tuple:
    quant = spec.quantization.model_dump_json() if spec.quantization else None
    return str(resolved.path), resolved.weights_hash, quant


def shared_base(spec: BaseModelSpec, peft_type: str | None = None) -> BaseHandle:
    """The loaded copy of `spec`'s base for adapters of `peft_type` (None: any copy will do)."""
    resolved = resolve_model(spec, verify=False)
    key = _base_key(spec, resolved)
    with _BASES_LOCK:
        lanes = _BASES.setdefault(key, [])
        for handle in lanes:
            if peft_type is None or handle.peft_type in (None, peft_type):
                handle.peft_type = handle.peft_type or peft_type
                return handle
        handle = BaseHandle(resolved, load_model(spec, resolved).eval(), load_tokenizer(spec, resolved),
                            peft_type=peft_type)
        lanes.append(handle)
        return handle


def base_loads() -> int:
    """How many base-model copies this process has loaded for shared use (the server reports it)."""
    with _BASES_LOCK:
        return sum(len(lanes) for lanes in _BASES.values())


_EMBED_LOCKS: dict[int, threading.Lock] = {}


def _embed_lock(embedder: object) -> threading.Lock:
    """Embedders are cached per process and their fast tokenizers are not thread-safe."""
    with _BASES_LOCK:
        return _EMBED_LOCKS.setdefault(id(embedder), threading.Lock())


# --- generation ------------------------------------------------------------------------------


def sampling_kwargs(temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """Greedy at temperature 0 (evaluation), sampling otherwise (the server's OpenAI parameters)."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
                   temperature: float = 0.0, top_p: float = 1.0,
                   on_batch: Callable[[int, int], None] | None = None) -> list[str]:
    """Batched, left-padded generation (greedy by default); returns the new text of each prompt, in order.

    Prompts are batched by token length so a batch pads to similar lengths (retrieval prompts vary by
    hundreds of tokens); `on_batch(done, total)` reports progress after each batch.
    """
    import torch

    tokenizer.padding_side = "left"
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                **sampling_kwargs(temperature, top_p),
            )
        new = out[:, enc["input_ids"].shape[1]:]
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
            outputs[i] = text.strip()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return outputs


def _eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids])
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}


def _finish(new_ids: list[int], eos: set[int], max_new_tokens: int) -> tuple[int, str]:
    """(completion tokens before the first end-of-sequence token, OpenAI's finish_reason)."""
    for n, token in enumerate(new_ids):
        if token in eos:
            return n, "stop"
    return len(new_ids), "length" if len(new_ids) >= max_new_tokens else "stop"


def _stop_when(event: threading.Event):
    """A stopping criterion that ends generation once `event` is set (a stream's reader went away)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def _adapter_digest(adapter_dir: Path) -> str:
    """Content-derived adapter name: one name per distinct adapter, whatever ref it was loaded by."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        if (adapter_dir / name).exists():
            digest.update(name.encode() + b"\0" + (adapter_dir / name).read_bytes())
    return "adapter_" + digest.hexdigest()[:16]


def _peft_type(adapter_dir: Path) -> str:
    config = adapter_dir / "adapter_config.json"
    try:
        return str(json.loads(config.read_text())["peft_type"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise FileNotFoundError(f"{config} is missing or has no peft_type ({exc}); "
                                "point at the `adapter/` folder a training run wrote") from None


class System:
    """A base model, optionally an adapter and a retriever, and the prompt template."""

    def __init__(self, ref: str, spec: TaskSpec, adapter_dir: Path | None, index_dir: Path | None,
                 embedder=None, verify_index: bool = True):
        self.ref, self.spec = ref, spec
        self.method = spec.behavior.adapter.method if (spec.behavior and adapter_dir) else None
        self.adapter_name: str | None = None
        self.top_k = spec.knowledge.top_k if spec.knowledge else 4
        self.max_new_tokens = spec.evaluation.max_new_tokens if spec.evaluation else 48
        self.retriever = None
        if index_dir is not None:
            from vectorstore import Retriever

            self.retriever = Retriever.open(index_dir, embedder=embedder, verify=verify_index)
        self._private_model = self._prompt_model = None
        injected = self.method is not None and self.method not in PROMPT_LEARNING | WEIGHT_METHODS
        lane = _peft_type(Path(adapter_dir)) if injected else None
        self.handle = shared_base(spec.base_model, lane)
        if self.method is not None:
            self._attach_adapter(Path(adapter_dir))

    # --- adapters ---------------------------------------------------------------------------

    def _attach_adapter(self, adapter_dir: Path) -> None:
        from components.methods import load_adapter

        handle = self.handle
        with handle.lock:
            if self.method in PROMPT_LEARNING:
                self._prompt_model = load_adapter(handle.model, adapter_dir).eval()
            elif self.method in WEIGHT_METHODS:
                own = load_model(self.spec.base_model, handle.resolved)
                self._private_model = load_adapter(own, adapter_dir).eval()
            else:
                self.adapter_name = _adapter_digest(adapter_dir)
                if handle.peft is None:
                    handle.peft = load_adapter(handle.model, adapter_dir, adapter_name=self.adapter_name)
                elif self.adapter_name not in handle.adapters:
                    load_adapter(handle.peft, adapter_dir, adapter_name=self.adapter_name)
                handle.adapters.add(self.adapter_name)
                handle.peft.eval()

    def _model_for(self, use_adapter: bool):
        """(model, context manager) to generate with. Call it, and generate, under `self.handle.lock`."""
        handle = self.handle
        plain = contextlib.nullcontext()
        if use_adapter and self._private_model is not None:
            return self._private_model, plain
        if use_adapter and self._prompt_model is not None:
            return self._prompt_model, handle.peft.disable_adapter() if handle.peft is not None else plain
        if use_adapter and self.adapter_name is not None:
            if handle.peft.active_adapter != self.adapter_name:
                handle.peft.set_adapter(self.adapter_name, inference_mode=True)  # frozen: nothing here trains
            return handle.peft, plain
        if handle.peft is not None:
            return handle.peft, handle.peft.disable_adapter()
        return handle.model, plain

    @contextlib.contextmanager
    def using(self, use_adapter: bool = True) -> Iterator[object]:
        """The model with this system's adapter set (or disabled), held under the base's lock."""
        with self.handle.lock:
            model, ctx = self._model_for(use_adapter and self.method is not None)
            with ctx:
                yield model

    # --- querying ---------------------------------------------------------------------------

    def retrieve(self, question: str, k: int | None = None) -> list:
        if self.retriever is None:
            return []
        with _embed_lock(self.retriever.embedder):
            return self.retriever.search(question, k or self.top_k)

    def generate(self, batch: list[list[dict]], *, use_adapter: bool = True, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_p: float = 1.0,
                 on_batch: Callable[[int, int], None] | None = None) -> list[str]:
        """Answers to already-contextualised message lists (the evaluation's batched path)."""
        from components.data import render_prompt

        tok = self.handle.tokenizer
        prompts = [render_prompt(tok, messages) for messages in batch]
        with self.handle.lock:
            model, ctx = self._model_for(use_adapter and self.method is not None)
            with ctx:
                return generate_texts(model, tok, prompts, max_new_tokens or self.max_new_tokens,
                                      temperature=temperature, top_p=top_p, on_batch=on_batch)

    def _prompt(self, messages: list[dict], use_retrieval: bool, top_k: int | None) -> tuple[str, list[Citation]]:
        from components.data import render_prompt

        hits = self.retrieve(last_user_text(messages), top_k) if use_retrieval else []
        prompt = render_prompt(self.handle.tokenizer, with_context(messages, [(h.title, h.text) for h in hits]))
        return prompt, _citations(hits)

    def _generate_one(self, prompt: str, *, use_adapter: bool, max_new_tokens: int, sampling: dict,
                      streamer=None, stop: threading.Event | None = None) -> tuple[str, Usage, str]:
        """One prompt, under the base's lock: (text, usage, finish_reason)."""
        import torch

        tok = self.handle.tokenizer
        extra = {"streamer": streamer} if streamer is not None else {}
        if stop is not None:
            extra["stopping_criteria"] = _stop_when(stop)
        with self.handle.lock:
            enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
            model, ctx = self._model_for(use_adapter and self.method is not None)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with ctx, torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                     **sampling, **extra)
            eos = _eos_ids(model, tok)
        n_prompt = int(enc["input_ids"].shape[1])
        new = out[0, n_prompt:].tolist()
        n_new, finish = _finish(new, eos, max_new_tokens)
        text = tok.decode(new[:n_new], skip_special_tokens=True).strip()
        return text, Usage(n_prompt, n_new, n_prompt + n_new), finish

    def query(self, question: str | None = None, *, messages: list[dict] | None = None, use_adapter: bool = True,
              use_retrieval: bool = True, top_k: int | None = None, max_new_tokens: int | None = None,
              temperature: float = 0.0, top_p: float = 1.0) -> Answer:
        """Answer a question (or a chat), with the retrieved sources as numbered citations."""
        start = time.perf_counter()
        messages = _checked_messages(messages or question_messages(question or ""))
        prompt, citations = self._prompt(messages, use_retrieval, top_k)
        t_retrieved = time.perf_counter()
        text, usage, finish = self._generate_one(prompt, use_adapter=use_adapter,
                                                 max_new_tokens=max_new_tokens or self.max_new_tokens,
                                                 sampling=sampling_kwargs(temperature, top_p))
        end = time.perf_counter()
        return Answer(text, citations, self.ref, _ms(end - start), _ms(t_retrieved - start), _ms(end - t_retrieved),
                      usage, finish)

    def stream(self, question: str | None = None, *, messages: list[dict] | None = None, use_adapter: bool = True,
               use_retrieval: bool = True, top_k: int | None = None, max_new_tokens: int | None = None,
               temperature: float = 0.0, top_p: float = 1.0) -> Stream:
        """Citations now, then the answer as text pieces (the server's SSE stream)."""
        messages = _checked_messages(messages or question_messages(question or ""))
        prompt, citations = self._prompt(messages, use_retrieval, top_k)
        return Stream(self, citations, prompt, use_adapter=use_adapter,
                      max_new_tokens=max_new_tokens or self.max_new_tokens, sampling=sampling_kwargs(temperature, top_p))


class Stream:
    """An answer being generated on a worker thread: `citations` at once, text pieces by iteration,
    then `usage` and `finish_reason`. Leaving the iteration early stops the generation."""

    def __init__(self, system: System, citations: list[Citation], prompt: str, *, use_adapter: bool,
                 max_new_tokens: int, sampling: dict):
        from transformers import TextIteratorStreamer

        self.citations = citations
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._streamer = TextIteratorStreamer(system.handle.tokenizer, skip_prompt=True, skip_special_tokens=True)
        args = (system, prompt, dict(use_adapter=use_adapter, max_new_tokens=max_new_tokens, sampling=sampling))
        self._thread = threading.Thread(target=self._run, args=args, daemon=True, name=f"stream-{system.ref}")
        self._thread.start()

    def _run(self, system: System, prompt: str, kwargs: dict) -> None:
        try:
            _, self.usage, self.finish_reason = system._generate_one(
                prompt, streamer=self._streamer, stop=self._stop, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which re-raises it
            self._error = exc
            self._streamer.end()  # unblock the reader

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._streamer:
                if piece:
                    yield piece
        finally:
            self._stop.set()  # a reader that left early frees the base for the next request
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _checked_messages(messages: list[dict]) -> list[dict]:
    if not any(m.get("role") == "user" for m in messages):
        raise ValueError("messages need at least one message with role 'user' (the question to answer)")
    return messages


def _citations(hits: list) -> list[Citation]:
    return [Citation(i, h.doc_id, h.title, " ".join(h.text.split())[:SNIPPET_CHARS], round(float(h.score), 4),
                     int(h.chunk_id)) for i, h in enumerate(hits, 1)]


def load_system(ref: str, registry=None, verify: bool = True) -> System:
    """`load_system("name@production").query("...")`: a registered system, integrity checked."""
    from components.registry import Registry

    version = (registry or Registry()).open(ref, verify=verify)
    spec = TaskSpec.model_validate(version.manifest["spec"], context={"check_exists": False})
    adapter_dir, index_dir = version.path / "adapter", version.path / "index"
    return System(version.ref, spec, adapter_dir if adapter_dir.exists() else None,
                  index_dir if index_dir.exists() else None, verify_index=verify)
