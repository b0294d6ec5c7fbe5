"""Adapter folders: write a trained adapter, read one back onto a base model.

peft methods: peft's own `save_pretrained` folder (loadable with vanilla `PeftModel.from_pretrained`),
byte-stable JSON; selective/full: the trained base tensors as safetensors; hybrids: one peft folder per
part (components.methods.hybrid). Every folder carries the spec that built it (METHOD_FILE, lineage).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file, save_file

from components.methods.registry import fix_prompt_learning_generate, hybrid
from components.spec import AdapterSpec, HybridSpec

METHOD_FILE = "adaptflow_adapter.json"  # the spec that built the adapter (lineage), in every adapter folder
WEIGHTS_FILE = "adapter_weights.safetensors"  # selective/full: the trained base tensors


def _write_method_file(out_dir: Path, adapter: AdapterSpec, extra: dict) -> None:
    record = {"method": adapter.method, "spec": adapter.model_dump(mode="json"), **extra}
    (out_dir / METHOD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _sort_set_fields(path: Path, config: PeftConfig) -> None:
    """peft writes set-valued fields (target_modules, ...) in hash order, which changes between
    processes; sorted, the same training gives the same bytes (content-addressed registry)."""
    data = json.loads(path.read_text())
    for key, value in config.to_dict().items():
        if isinstance(value, set):
            data[key] = sorted(value)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def save_adapter(model, adapter: AdapterSpec, out_dir: Path) -> Path:
    """peft methods: `save_pretrained` (adapter_config.json + adapter_model.safetensors).
    selective/full: the trained tensors as safetensors, plus the method JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(adapter, HybridSpec):
        hybrid.save(model, [p.method for p in adapter.parts], out_dir, _sort_set_fields)
        _write_method_file(out_dir, adapter, {"format": "hybrid"})
        return out_dir
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir)
        _sort_set_fields(out_dir / "adapter_config.json", model.peft_config[model.active_adapter])
        _write_method_file(out_dir, adapter, {"format": "peft"})
        return out_dir
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt", "method": adapter.method})
    base = str(getattr(model.config, "name_or_path", ""))
    _write_method_file(out_dir, adapter, {"format": "weights", "base_model": base, "parameters": sorted(tensors)})
    return out_dir


def load_adapter(base_model, adapter_dir: Path, adapter_name: str = "default", *, is_trainable: bool = False):
    """The base model with the adapter. A second peft adapter is added to an existing PeftModel under
    `adapter_name` (switch with `set_adapter`); selective/full tensors are copied into the base in place."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / hybrid.MANIFEST).exists():
        if isinstance(base_model, PeftModel | hybrid.PeftMixedModel) or adapter_name != "default":
            raise ValueError(f"{adapter_dir} is a hybrid adapter, which changes the base in several ways at once; "
                             "load it onto a fresh base model")
        model = hybrid.load(base_model, adapter_dir, is_trainable=is_trainable)
        fix_prompt_learning_generate(model)
        return model
    if (adapter_dir / "adapter_config.json").exists():
        if isinstance(base_model, PeftModel):
            try:
                base_model.load_adapter(adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable)
            except ValueError as exc:
                raise ValueError(
                    f"{adapter_dir}: cannot add adapter '{adapter_name}' to this model: {exc}; "
                    "adapters of different peft types need their own copy of the base model"
                ) from exc
            model = base_model
        else:
            model = PeftModel.from_pretrained(base_model, adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable)
        fix_prompt_learning_generate(model)
        return model
    if (adapter_dir / WEIGHTS_FILE).exists():
        return _load_weights(base_model, adapter_dir, adapter_name)
    raise FileNotFoundError(
        f"{adapter_dir} holds neither adapter_config.json (peft) nor {WEIGHTS_FILE} (selective/full); "
        "point at the `adapter/` folder a training run wrote"
    )


def _load_weights(base_model, adapter_dir: Path, adapter_name: str):
    if isinstance(base_model, PeftModel) or adapter_name != "default":
        raise ValueError(
            f"{adapter_dir} holds selective/full weights, which replace base tensors and cannot be stacked "
            "as a named adapter; load it onto a fresh base model"
        )
    tensors = load_file(adapter_dir / WEIGHTS_FILE)
    params = dict(base_model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in params or params[name].shape != value.shape:
                raise ValueError(
                    f"{adapter_dir / WEIGHTS_FILE}: tensor '{name}' {tuple(value.shape)} does not fit this base model; "
                    "load it onto the base model it was trained from (see its adaptflow_adapter.json)"
                )
            params[name].copy_(value.to(params[name].dtype))
    return base_model
