"""Translate `base_model.quantization` to bitsandbytes (the one place its keyword names appear), and
choose bitsandbytes' CPU kernels deliberately instead of inheriting them from the host.

On CPUs with AVX512-BF16 (Intel Sapphire Rapids+, AMD Zen 4+) bitsandbytes 0.50 repacks a 4-bit
layer's weight the first time it runs in eval mode without gradients and from then on multiplies
through a fused bf16 kernel (`gemv_4bit`), whatever the compute dtype and even after `.train()`.
The same spec then gave different logits (merge drift 1.15 instead of < 1e-3), a different adapter
from the same seed, and 0.62 instead of 0.75 triage accuracy, depending on the CPU. We pin every CPU
4-bit layer to the portable path: dequantize to the compute dtype, then a plain matmul — the path
every x86 CPU runs, and the one the README's numbers were measured on.
"""

from __future__ import annotations

import torch

from components.spec import QuantizationSpec


def bnb_config(spec: QuantizationSpec, compute_dtype: torch.dtype):
    """The BitsAndBytesConfig for a spec's quantization, computing in `compute_dtype` (the precision policy)."""
    from transformers import BitsAndBytesConfig

    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def pin_cpu_4bit_kernels(model, fused_bf16: bool = False) -> int:
    """Choose the CPU 4-bit kernel of every bitsandbytes layer: the portable dequantize + matmul path
    (default), or bitsandbytes' fused bf16 kernel where the host has AVX512-BF16 (`fused_bf16=True`,
    for tests that show the difference). `load_model` pins before the first forward pass; on a layer already
    repacked it restores the portable layout (its absmax stays rounded to bf16). Returns the layers pinned."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse, has_avx512bf16
    from bitsandbytes.nn import Linear4bit

    fused = fused_bf16 and has_avx512bf16()
    pinned = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = fused
        state = getattr(module.weight, "quant_state", None)
        if not fused and state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
        pinned += 1
    return pinned
