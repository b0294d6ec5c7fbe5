"""Hybrid adapters: several tuners on one base, trained together, saved as one standard peft folder per part.

Two shapes (components.spec.HybridSpec refuses the rest):

- low-rank tuners together (lora, dora, loha, lokr): peft's `PeftMixedModel`, one named adapter per part,
  all active. peft cannot save a mixed model (NotImplementedError in 0.21), so each part's state dict is
  written as its own peft folder; keys lose the `.base_layer` that the wrapping of one tuner by the next
  inserts, which is exactly the key a single-tuner PeftModel expects.
- prompt_tuning + one lora/dora: the LoRA is injected with `get_peft_model`, and the soft prompt wraps the
  LoRA-injected model (peft has no mixed model for prompt learning). Both train; each part's state dict is
  its own peft folder.

```
adapter/hybrid.json                      {"kind": "mixed"|"prompt", "parts": [{"name", "method", "peft_type"}]}
adapter/part0-lora/adapter_config.json   + adapter_model.safetensors: loads with vanilla PeftModel.from_pretrained
adapter/part1-loha/...
```
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from peft import PeftConfig, PeftMixedModel, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file

MANIFEST = "hybrid.json"
PARTS = "_adaptflow_hybrid_parts"  # {part name: the PeftModel holding it}, on the outer model (prompt kind)


@dataclass(frozen=True)
class HybridBuild:
    """What the hybrid builder returns: (part name, peft config) in order, and which shape."""

    parts: tuple[tuple[str, PeftConfig], ...]
    kind: str  # "mixed" | "prompt"


def part_names(methods: list[str]) -> list[str]:
    return [f"part{i}-{m}" for i, m in enumerate(methods)]


def is_hybrid(model) -> bool:
    return isinstance(model, PeftMixedModel) or PARTS in getattr(model, "__dict__", {})


def attach(model, build: HybridBuild):
    if build.kind == "mixed":
        (first, config), *rest = build.parts
        mixed = get_peft_model(model, config, adapter_name=first, mixed=True)
        for name, cfg in rest:
            mixed.add_adapter(name, cfg)
        mixed.set_adapter([name for name, _ in build.parts])  # all active, all trainable
        return mixed
    (low_name, low_cfg), = [(n, c) for n, c in build.parts if not c.is_prompt_learning]
    (prompt_name, prompt_cfg), = [(n, c) for n, c in build.parts if c.is_prompt_learning]
    inner = get_peft_model(model, low_cfg)
    outer = get_peft_model(inner.get_base_model(), prompt_cfg)  # freezes everything below it, LoRA included
    for name, param in outer.named_parameters():
        if ".lora_" in name:
            param.requires_grad_(True)
    outer.__dict__[PARTS] = {low_name: inner, prompt_name: outer}  # a plain dict: no double registration
    return outer


def _parts(model) -> dict[str, tuple[object, str]]:
    """{part name: (model to read its state dict from, adapter name there)}."""
    if isinstance(model, PeftMixedModel):
        return {name: (model, name) for name in model.peft_config}
    return {name: (holder, "default") for name, holder in model.__dict__[PARTS].items()}


def save(model, methods: list[str], out_dir: Path, sort_sets) -> None:
    """One peft folder per part plus hybrid.json. `sort_sets(path, config)` makes the JSON byte-stable."""
    out_dir = Path(out_dir)
    parts, record = _parts(model), []
    for name, method in zip(part_names(methods), methods, strict=True):
        holder, adapter = parts[name]
        config = holder.peft_config[adapter]
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(holder, adapter_name=adapter)
        state = {k.replace(".base_layer", ""): v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(folder)  # adapter_config.json, as PeftModel.save_pretrained writes it
        data = json.loads((folder / "adapter_config.json").read_text())
        data["inference_mode"] = True
        (folder / "adapter_config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
        sort_sets(folder / "adapter_config.json", config)
        record.append({"name": name, "method": method, "peft_type": str(config.peft_type.value)})
    kind = "mixed" if isinstance(model, PeftMixedModel) else "prompt"
    (out_dir / MANIFEST).write_text(json.dumps({"kind": kind, "parts": record}, indent=2, sort_keys=True) + "\n")


def load(base_model, adapter_dir: Path, *, is_trainable: bool = False):
    """The base with every part attached and active (the hybrid as trained)."""
    adapter_dir = Path(adapter_dir)
    manifest = json.loads((adapter_dir / MANIFEST).read_text())
    names = [p["name"] for p in manifest["parts"]]
    if manifest["kind"] == "mixed":
        model = PeftMixedModel.from_pretrained(base_model, adapter_dir / names[0], adapter_name=names[0],
                                               is_trainable=is_trainable)
        for name in names[1:]:
            model.load_adapter(adapter_dir / name, adapter_name=name, is_trainable=is_trainable)
        model.set_adapter(names)
        return model
    prompt = next(p["name"] for p in manifest["parts"] if p["peft_type"] == "PROMPT_TUNING")
    low = next(n for n in names if n != prompt)
    inner = PeftModel.from_pretrained(base_model, adapter_dir / low, is_trainable=is_trainable)
    outer = PeftModel.from_pretrained(inner.get_base_model(), adapter_dir / prompt, is_trainable=is_trainable)
    outer.__dict__[PARTS] = {low: inner, prompt: outer}
    return outer


@contextlib.contextmanager
def disabled(model) -> Iterator[None]:
    """Every part off: the base model's own outputs (for the generation check)."""
    with contextlib.ExitStack() as stack:
        if isinstance(model, PeftMixedModel):
            stack.enter_context(model.disable_adapter())
        else:
            for holder in {id(h): h for h in model.__dict__[PARTS].values()}.values():
                stack.enter_context(holder.disable_adapter())
        yield
