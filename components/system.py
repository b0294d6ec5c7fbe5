"""One loading path for a combined system: shared base model + adapter + retriever + template.

Every consumer (evaluation, `adaptflow query`, the HTTP server, the Prefect `query` deployment)
builds a `System` here. Systems on the same base share one copy of it: peft adapters are loaded
into one PeftModel under distinct names and switched with `set_adapter` under the base's lock,
so a request never sees another system's adapter and the base is never reloaded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.models import ResolvedModel, load_model, load_tokenizer, resolve_model
from components.prompting import last_user_text, question_messages, with_context
from components.spec import PROMPT_LEARNING, BaseModelSpec, TaskSpec

_SHARED_BY_BASE = {"lora", "dora", "qlora", "adalora", "ia3", "loha", "lokr"}


@dataclass
class Citation:
    n: int
    doc_id: str
    title: str
    snippet: str
    score: float
    chunk_id: int


@dataclass
class Answer:
    answer: str
    citations: list[Citation]
    system: str
    latency_ms: float
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BaseHandle:
    """One loaded base model, shared by every system on it."""

    resolved: ResolvedModel
    model: object
    tokenizer: object
    lock: threading.RLock = field(default_factory=threading.RLock)
    peft: object | None = None  # PeftModel holding the LoRA-family adapters, by name
    loaded: set[str] = field(default_factory=set)
    loads: int = 1  # how many times a base was loaded for this handle (the server reports it)


_BASES: dict[tuple, BaseHandle] = {}
_BASES_LOCK = threading.Lock()


def shared_base(spec: BaseModelSpec) -> BaseHandle:
    resolved = resolve_model(spec, verify=False)
    key = (str(resolved.path), spec.quantization)
    with _BASES_LOCK:
        if key not in _BASES:
            model = load_model(spec, resolved).eval()
            _BASES[key] = BaseHandle(resolved, model, load_tokenizer(spec, resolved))
        return _BASES[key]


def sampling_kwargs(temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """Greedy at temperature 0 (evaluation), sampling otherwise (the server's OpenAI parameters)."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
                   temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
    """Batched, left-padded generation (greedy by default); returns the new text of each prompt."""
    import torch

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                **sampling_kwargs(temperature, top_p),
            )
        new = out[:, enc["input_ids"].shape[1]:]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


class System:
    """A base model, optionally an adapter and a retriever, and the prompt template."""

    def __init__(self, ref: str, spec: TaskSpec, adapter_dir: Path | None, index_dir: Path | None,
                 embedder=None, verify_index: bool = True):
        self.ref, self.spec = ref, spec
        self.method = spec.behavior.adapter.method if (spec.behavior and adapter_dir) else None
        self.adapter_name = ref.replace(".", "_").replace("@", "__") if self.method else None
        self.top_k = spec.knowledge.top_k if spec.knowledge else 4
        self.max_new_tokens = spec.evaluation.max_new_tokens if spec.evaluation else 48
        self.retriever = None
        if index_dir is not None:
            from vectorstore import Retriever

            self.retriever = Retriever.open(index_dir, embedder=embedder, verify=verify_index)
        self._private_model = None
        self._prompt_model = None
        self.handle = shared_base(spec.base_model)
        if self.method is not None:
            self._attach_adapter(Path(adapter_dir))

    # --- adapters ---------------------------------------------------------------------------

    def _attach_adapter(self, adapter_dir: Path) -> None:
        from components.methods import load_adapter

        handle = self.handle
        with handle.lock:
            if self.method in _SHARED_BY_BASE:
                if handle.peft is None:
                    handle.peft = load_adapter(handle.model, adapter_dir, adapter_name=self.adapter_name)
                elif self.adapter_name not in handle.loaded:
                    load_adapter(handle.peft, adapter_dir, adapter_name=self.adapter_name)
                handle.loaded.add(self.adapter_name)
                handle.peft.eval()
            elif self.method in PROMPT_LEARNING:
                # Prompt learning leaves base modules untouched: wrap the shared base on its own.
                self._prompt_model = load_adapter(self._raw_base(), adapter_dir, adapter_name="default").eval()
            else:  # full / selective change base weights: this system needs its own copy
                own = load_model(self.spec.base_model, handle.resolved)
                self._private_model = load_adapter(own, adapter_dir).eval()

    def _raw_base(self):
        handle = self.handle
        return handle.peft.get_base_model() if handle.peft is not None else handle.model

    def _model_for(self, use_adapter: bool):
        """(model, context manager) to generate with, chosen under the base's lock."""
        import contextlib

        handle = self.handle
        plain = contextlib.nullcontext()
        if use_adapter and self._private_model is not None:
            return self._private_model, plain
        if use_adapter and self._prompt_model is not None:
            off = handle.peft.disable_adapter() if handle.peft is not None else plain
            return self._prompt_model, off
        if use_adapter and self.adapter_name is not None:
            handle.peft.set_adapter(self.adapter_name)
            return handle.peft, plain
        if handle.peft is not None:
            return handle.peft, handle.peft.disable_adapter()
        return handle.model, plain

    # --- querying ---------------------------------------------------------------------------

    def retrieve(self, question: str, k: int | None = None) -> list:
        if self.retriever is None:
            return []
        return self.retriever.search(question, k or self.top_k)

    def generate(self, batch: list[list[dict]], *, use_adapter: bool = True, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
        from components.data import render_prompt

        tok = self.handle.tokenizer
        prompts = [render_prompt(tok, messages) for messages in batch]
        with self.handle.lock:
            model, ctx = self._model_for(use_adapter and self.method is not None)
            with ctx:
                return generate_texts(model, tok, prompts, max_new_tokens or self.max_new_tokens,
                                      temperature=temperature, top_p=top_p)

    def query(self, question: str | None = None, *, messages: list[dict] | None = None, use_adapter: bool = True,
              use_retrieval: bool = True, top_k: int | None = None, max_new_tokens: int | None = None,
              temperature: float = 0.0, top_p: float = 1.0) -> Answer:
        start = time.perf_counter()
        messages = messages or question_messages(question or "")
        hits = self.retrieve(last_user_text(messages), top_k) if use_retrieval else []
        t_retrieved = time.perf_counter()
        prompt = with_context(messages, [(h.title, h.text) for h in hits])
        [text] = self.generate([prompt], use_adapter=use_adapter, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p)
        end = time.perf_counter()
        citations = _citations(hits)
        return Answer(text, citations, self.ref, round((end - start) * 1000, 1),
                      round((t_retrieved - start) * 1000, 1), round((end - t_retrieved) * 1000, 1))

    def stream(self, messages: list[dict], *, use_retrieval: bool = True, max_new_tokens: int | None = None,
               temperature: float = 0.0, top_p: float = 1.0) -> tuple[list[Citation], Iterator[str]]:
        """Citations now, then the answer as text pieces (the server's SSE stream)."""
        from transformers import TextIteratorStreamer

        from components.data import render_prompt

        hits = self.retrieve(last_user_text(messages)) if use_retrieval else []
        citations = _citations(hits)
        tok = self.handle.tokenizer
        prompt = render_prompt(tok, with_context(messages, [(h.title, h.text) for h in hits]))
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
        sampling = sampling_kwargs(temperature, top_p)

        def run() -> None:
            with self.handle.lock:
                model, ctx = self._model_for(self.method is not None)
                with ctx:
                    model.generate(**enc, max_new_tokens=max_new_tokens or self.max_new_tokens, streamer=streamer,
                                   pad_token_id=tok.pad_token_id, **sampling)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return citations, iter(streamer)


def _citations(hits: list) -> list[Citation]:
    return [Citation(i, h.doc_id, h.title, " ".join(h.text.split())[:240], round(float(h.score), 4), int(h.chunk_id))
            for i, h in enumerate(hits, 1)]


def load_system(ref: str, registry=None, verify: bool = True) -> System:
    """`load_system("name@production").query("...")` — a registered system, integrity checked."""
    from components.registry import Registry

    registry = registry or Registry()
    version = registry.open(ref, verify=verify)
    spec = TaskSpec.model_validate(version.manifest["spec"], context={"check_exists": False})
    adapter_dir = version.path / "adapter"
    index_dir = version.path / "index"
    return System(
        version.ref, spec,
        adapter_dir if adapter_dir.exists() else None,
        index_dir if index_dir.exists() else None,
        verify_index=verify,
    )
