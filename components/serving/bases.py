"""Loaded base models, shared by every system on them, each with its batching engine.

peft tuners that inject layers (lora, dora, qlora, adalora, ia3, loha, lokr) share ONE copy of a base:
adapters go into one PeftModel under content-derived names. peft cannot mix tuner types in one
PeftModel, so each tuner type has its own lane: the first copy takes the first type that comes,
another type loads a second copy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from components.models.load import ResolvedModel, load_model, load_tokenizer, resolve_model
from components.serving.engine import Engine
from components.spec import BaseModelSpec


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
    users: dict[str, int] = field(default_factory=dict)  # adapter name -> loaded systems using it
    _engine: Engine | None = None
    # not `lock`: the engine holds that for every forward pass, and the server's event loop asks for the engine on
    # every request (a profile caught it waiting there for whole prefills, every stream on the server stalled)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def engine(self) -> Engine:
        """The scheduler that batches every request on this copy (started on first use)."""
        with self._engine_lock:
            if self._engine is None:
                pad = self.tokenizer.pad_token_id
                self._engine = Engine(self.lock, pad if pad is not None else self.tokenizer.eos_token_id)
            return self._engine

    @property
    def context_tokens(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)


_BASES: dict[tuple, list[BaseHandle]] = {}
_BASES_LOCK = threading.Lock()


def _base_key(spec: BaseModelSpec, resolved: ResolvedModel, precision: str) -> tuple:
    quant = spec.quantization.model_dump_json() if spec.quantization else None
    return str(resolved.path), resolved.weights_hash, quant, precision


def shared_base(spec: BaseModelSpec, peft_type: str | None = None, precision: str = "auto") -> BaseHandle:
    """The loaded copy of `spec`'s base for adapters of `peft_type` (None: any copy will do), in the
    precision the systems were trained in (`training.precision`, components.models.precision)."""
    resolved = resolve_model(spec, verify=False)
    key = _base_key(spec, resolved, precision)
    with _BASES_LOCK:
        lanes = _BASES.setdefault(key, [])
        for handle in lanes:
            if peft_type is None or handle.peft_type in (None, peft_type):
                handle.peft_type = handle.peft_type or peft_type
                return handle
        handle = BaseHandle(resolved, load_model(spec, resolved, precision=precision).eval(), load_tokenizer(spec, resolved),
                            peft_type=peft_type)
        lanes.append(handle)
        return handle


def base_loads() -> int:
    """How many base-model copies this process has loaded for shared use (the server reports it)."""
    with _BASES_LOCK:
        return sum(len(lanes) for lanes in _BASES.values())


def engines() -> list[Engine]:
    """Every started engine (the server's queue-depth gauge reads them)."""
    with _BASES_LOCK:
        return [h._engine for lanes in _BASES.values() for h in lanes if h._engine is not None]


_EMBED_LOCKS: dict[int, threading.Lock] = {}


def embed_lock(embedder: object) -> threading.Lock:
    """Embedders are cached per process and their fast tokenizers are not thread-safe."""
    if hasattr(embedder, "batches"):  # a BatchingEmbedder (components.serving.embedding) has its own
        return embedder.lock
    with _BASES_LOCK:
        return _EMBED_LOCKS.setdefault(id(embedder), threading.Lock())
