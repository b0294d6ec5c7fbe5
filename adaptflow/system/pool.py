"""How an adapter meets its base in the pool of loaded bases (components.serving.bases).

- peft tuners that inject layers (lora, dora, qlora, adalora, ia3, loha, lokr) share ONE copy of the
  base: adapters go into the lane's one PeftModel under content-derived names, counted per user.
- prompt learning (prompt_tuning, p_tuning, prefix_tuning) wraps the shared base in its own PeftModel.
- selective / full / hybrid change base weights: the system gets a private copy of the base.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from components.models.load import load_model
from components.models.precision import task_precision
from components.serving.bases import BaseHandle, base_loads, shared_base
from components.spec import PROMPT_LEARNING, SHARED_LANE, TaskSpec, soft_prompt

__all__ = ["ADAPTER_FILES", "Attached", "BaseHandle", "adapter_digest", "attach_adapter", "base_loads",
           "injected", "peft_type", "release_adapter", "shared_base"]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_weights.safetensors")


@dataclass
class Attached:
    """Where a system's adapter lives: a name in the lane's PeftModel, or a model of its own."""

    adapter_name: str | None = None
    private_model: object | None = None  # a private base copy with the adapter (weight methods)
    prompt_model: object | None = None  # the shared base wrapped in the system's own PeftModel


def adapter_digest(adapter_dir: Path) -> str:
    """Content-derived adapter name: one name per distinct adapter, whatever ref it was loaded by."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        if (adapter_dir / name).exists():
            digest.update(name.encode() + b"\0" + (adapter_dir / name).read_bytes())
    return "adapter_" + digest.hexdigest()[:16]


def peft_type(adapter_dir: Path) -> str:
    config = adapter_dir / "adapter_config.json"
    try:
        return str(json.loads(config.read_text())["peft_type"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise FileNotFoundError(f"{config} is missing or has no peft_type ({exc}); "
                                "point at the `adapter/` folder a training run wrote") from None


def injected(method: str | None) -> bool:
    """True for the methods whose adapters share the lane's PeftModel (the spec class's shares_base_lane)."""
    return method in SHARED_LANE


def attach_adapter(handle: BaseHandle, spec: TaskSpec, method: str, adapter_dir: Path) -> Attached:
    """Load the adapter at `adapter_dir` where its method puts it (see the module docstring)."""
    from components.methods.io import load_adapter

    with handle.lock:
        if method in PROMPT_LEARNING:
            return Attached(prompt_model=load_adapter(handle.model, adapter_dir).eval())
        if method not in SHARED_LANE:  # weights and hybrids change their own copy of the base
            own = load_model(spec.reading_model, handle.resolved, precision=task_precision(spec))
            model = load_adapter(own, adapter_dir).eval()
            if spec.behavior is not None and soft_prompt(spec.behavior.adapter):
                return Attached(prompt_model=model)  # generated as prompt learning is (decoded alone)
            return Attached(private_model=model)
        name = adapter_digest(adapter_dir)
        if handle.peft is None:
            handle.peft = load_adapter(handle.model, adapter_dir, adapter_name=name)
        elif name not in handle.adapters:
            load_adapter(handle.peft, adapter_dir, adapter_name=name)
        handle.adapters.add(name)
        handle.users[name] = handle.users.get(name, 0) + 1
        handle.peft.eval()
        return Attached(adapter_name=name)


def release_adapter(handle: BaseHandle, name: str) -> bool:
    """One user fewer of adapter `name`; True if its weights were deleted from the lane.

    An adapter other loaded systems still use stays, and so does a lane's last adapter (peft's
    PeftModel cannot be emptied; it is reused by the next system of that lane)."""
    with handle.lock:
        handle.users[name] -= 1
        if handle.users[name] > 0 or len(handle.adapters) == 1:
            return False
        del handle.users[name]
        handle.adapters.discard(name)
        handle.peft.delete_adapter(name)
        return True
