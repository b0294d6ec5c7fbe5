"""Translate `base_model.quantization` to bitsandbytes: the one place its keyword names appear."""

from __future__ import annotations

from components.spec import QuantizationSpec


def bnb_config(spec: QuantizationSpec, device: str):
    import torch
    from transformers import BitsAndBytesConfig

    # On CPU bfloat16 compute ran 14x slower than float32 (DESIGN.md, measured); on CUDA bf16 is the norm.
    compute = torch.float32 if device == "cpu" else torch.bfloat16
    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=torch.uint8,
    )
