"""One precision policy for training, evaluation and serving (`behavior.training.precision`).

    auto -> bf16 on a GPU that supports it, else fp16; fp32 on CPU
    fp32 | bf16 | fp16 -> that compute dtype on any device

The frozen base is loaded in the compute dtype, straight onto its device (no fp32 copy in host
RAM: a 7B base in fp32 peaked at 40.6 GB on an H200 against 15.5 GB in bf16, at the same speed).
Trainable weights stay fp32 (peft's `autocast_adapter_dtype`; selective/full are upcast by the
training loop) and the forward pass runs under autocast in the compute dtype. A quantized base
keeps its non-4-bit layers in the compute dtype too (peft's k-bit recipe upcasts them to fp32:
1.46x the activations of bf16 LoRA, measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative logit tolerance of a cached-vs-uncached decode comparison: a few rounding steps of the
# dtype's mantissa (bf16 2^-8, fp16 2^-11). Token-by-token decoding and one full forward pass sum in
# a different order and differ by 1-4 bf16 steps on an H200 (the NF4 base failed 9 of 16 prompts at 1e-3).
_ROUNDING_STEPS = 4
_FP32_TOLERANCE = 1e-3


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Precision:
    requested: str  # what the spec says: auto | fp32 | bf16 | fp16
    name: str  # what runs: fp32 | bf16 | fp16
    device: str  # cpu | cuda | ...

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def autocast(self) -> bool:
        """Run the forward pass under autocast (fp32 trainable weights meet a lower-precision base)."""
        return self.name != "fp32"

    @property
    def grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.name == "fp16"

    @property
    def logit_tolerance(self) -> float:
        """Relative tolerance (times max |logit|) for comparing two ways of computing the same logits."""
        if self.name == "fp32":
            return _FP32_TOLERANCE
        return _ROUNDING_STEPS * torch.finfo(self.dtype).eps

    def to_dict(self) -> dict:
        return {"requested": self.requested, "compute_dtype": self.name, "device": self.device}


def resolve_precision(requested: str = "auto", device: str | None = None) -> Precision:
    device = device or default_device()
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"training.precision '{requested}' is not one of auto, fp32, bf16, fp16")
        return Precision(requested, requested, device)
    if device.startswith("cuda"):
        return Precision(requested, "bf16" if torch.cuda.is_bf16_supported() else "fp16", device)
    return Precision(requested, "fp32", device)


def task_precision(task) -> str:
    """The precision a task's system is trained, evaluated and served in (auto without a behavior half)."""
    behavior = getattr(task, "behavior", None)
    return behavior.training.precision if behavior is not None else "auto"
