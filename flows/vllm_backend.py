"""`adaptflow serve --engine vllm`: which registered systems a vLLM server can generate for, and how.

A loaded system (adaptflow.system.System) keeps its tokenizer, template, retriever and abstention here; its
rows go to vLLM through `system.backend` (System.submit). vLLM holds one base model and loads LoRA adapters at
run time, so a system is served on vLLM when
- its base (`knowledge.reader_model` or `base_model`) is the folder vLLM serves, in full precision (a 4/8-bit
  base would not give the answers the evaluation measured), and
- it has no adapter, or a plain LoRA one (peft_type LORA, no DoRA, no modules_to_save, rank within the server's
  --max-lora-rank).
Any other system (prompt tuning, prefix tuning, p-tuning, IA3, LoHa, LoKr, AdaLoRA, DoRA, hybrids, selective,
full, a quantized base) is refused per request, 400 with the reason, or with `--vllm-fallback builtin` answered
by the built-in engine in this process. A LoRA is loaded into vLLM under its version ref (`NAME@vN`) the first
time that version is asked for (an alias that moves is resolved per request, so a promotion is picked up at the
next request) and unloaded when the server evicts or reloads the version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from components.serving.engine import Row
from components.serving.vllm_engine import VllmEngine, VllmModel

__all__ = ["FALLBACKS", "VllmBackend", "adapter_refusal", "base_refusal"]

log = logging.getLogger(__name__)
FALLBACKS = ("refuse", "builtin")


def base_refusal(system, base: VllmModel) -> str | None:
    """Why the vLLM server's base is not this system's (then not even `adaptflow.adapter: false` goes there)."""
    reading = system.spec.reading_model
    if reading.quantization is not None:
        return (f"{system.ref} runs on a {reading.quantization.bits}-bit base; the vLLM server holds the base in full "
                "precision, which would not give the answers its evaluation measured")
    local = Path(base.root)
    served = Path(system.handle.resolved.path)
    if local.exists() and not (served.exists() and served.resolve() == local.resolve()):
        return f"{system.ref}'s base is {served}, and the vLLM server serves {base.root}"
    return None


def adapter_refusal(system, adapter_dir: Path | None, max_lora_rank: int | None = None) -> str | None:
    """Why vLLM cannot apply this system's adapter as peft does here, or None when it can (or there is none)."""
    if system.method is None or adapter_dir is None:
        return None
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    kind = str(config.get("peft_type"))
    if kind != "LORA":
        return (f"{system.ref} is a {system.method} system ({kind} adapter); vLLM loads LoRA adapters only "
                "(and not DoRA, prompt or prefix tuning, IA3, LoHa, LoKr, AdaLoRA, hybrids or changed base weights)")
    if config.get("use_dora"):
        return f"{system.ref} is a DoRA adapter; vLLM loads plain LoRA adapters only"
    if config.get("modules_to_save"):
        return f"{system.ref}'s adapter trains whole modules ({config['modules_to_save']}), which vLLM does not load"
    if max_lora_rank is not None and int(config.get("r", 0)) > max_lora_rank:
        return (f"{system.ref}'s LoRA rank is {config['r']}, over the vLLM server's --max-lora-rank {max_lora_rank}; "
                "start it with a larger --vllm-max-lora-rank")
    return None


@dataclass
class Lane:
    """A system's way to vLLM: its LoRA's name there (None: the base alone), or why it is refused."""

    backend: VllmBackend
    lora: str | None
    refused: str | None = None

    def submit(self, row: Row, use_adapter: bool) -> Row:
        if use_adapter and self.refused is not None:
            raise ValueError(f"--engine vllm cannot serve this request: {self.refused}. Serve it with --engine "
                             "builtin, or start the server with --vllm-fallback builtin")
        model = self.lora if use_adapter and self.lora is not None else self.backend.base.name
        return self.backend.engine.submit(row, model)


class VllmBackend:
    """The server's link to vLLM: attaches each loaded system (`Systems(backend=...)`), detaches it on eviction."""

    def __init__(self, engine: VllmEngine, fallback: str = "refuse", max_lora_rank: int | None = None):
        if fallback not in FALLBACKS:
            raise ValueError(f"--vllm-fallback is {fallback!r}; use one of {', '.join(FALLBACKS)}")
        self.engine, self.fallback, self.max_lora_rank = engine, fallback, max_lora_rank
        self.base = engine.base()

    def describe(self) -> dict:
        return {"engine": "vllm", "url": self.engine.url, "base": self.base.name, "fallback": self.fallback}

    def attach(self, system, version_path: Path) -> None:
        adapter_dir = version_path / "adapter"
        adapter_dir = adapter_dir if adapter_dir.is_dir() else None
        whole = base_refusal(system, self.base)
        why = whole or adapter_refusal(system, adapter_dir, self.max_lora_rank)
        if why is not None and self.fallback == "builtin":
            log.info("%s: the built-in engine answers it (%s)", system.ref, why)
            return  # no backend: System.submit queues its rows on the built-in engine
        if whole is not None:
            system.backend = _Refused(whole)  # not even its base is vLLM's
            return
        lora = None
        if why is None and system.method is not None:
            self.engine.load_lora(system.ref, str(adapter_dir.resolve()))
            lora = system.ref
        system.backend = Lane(self, lora, why)

    def detach(self, system) -> None:
        lane = getattr(system, "backend", None)
        system.backend = None
        if isinstance(lane, Lane) and lane.lora is not None:
            try:
                self.engine.unload_lora(lane.lora)
            except Exception as exc:  # noqa: BLE001 - a server that went away has nothing left to unload
                log.warning("could not unload %s from vLLM: %s", lane.lora, exc)


@dataclass
class _Refused:
    reason: str

    def submit(self, row: Row, use_adapter: bool) -> Row:
        raise ValueError(f"--engine vllm cannot serve this request: {self.reason}. Serve it with --engine builtin, "
                         "or start the server with --vllm-fallback builtin")
