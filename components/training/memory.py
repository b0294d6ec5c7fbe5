"""Training-memory estimate of a decoder-only model, and the `gradient_checkpointing: auto` rule.

The estimate is peak *allocated* memory (torch.cuda.max_memory_allocated on a GPU), in parts:

    weights      frozen base: 2 or 4 bytes a parameter, 4-bit layers 0.5 + 1/64 (nf4 + double-quantized absmax)
    trainable    fp32 weight + grad + two AdamW moments: 16 bytes a trainable parameter
    activations  kept for backward. Without checkpointing: tokens x layers x hidden x C bytes, C = 36 in
                 16-bit compute (fitted to LoRA r=8 q,v on a bf16 Llama-2-7B shape, batch 8 x 512, H200:
                 33.1 GB peak) and 68 in fp32 (saved-tensor count of the same layers on CPU). With
                 checkpointing: each layer's input (tokens x hidden x 2 or 4 bytes) plus one layer's
                 activations recomputed in backward
    transient    backward's working set: one more layer's activations, and on a 4-bit base the dequantized
                 weight of the largest projection (twice: forward recompute and backward)
    logits       answer positions only (`logits_to_keep`): 16-bit logits, their fp32 copy and its gradient

Measured against it (docs/memory.md has the table): H200, Llama-2-7B shape, r=8 q,v, 512 tokens a row.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

_ACT_BYTES_PER_HIDDEN = {16: 36, 32: 68}  # bytes kept per token, layer and hidden unit (see docstring)
_TRAINABLE_BYTES = 4 + 4 + 8  # fp32 weight + grad + AdamW moments
_NF4_BYTES = 0.5 + 1 / 64  # 4-bit codes + 8-bit absmax per 64-value block (double quant)
_INT8_BYTES = 1.0 + 4 / 4096  # int8 codes + fp32 row scales, roughly
CHECKPOINT_SHARE = 0.25  # auto: checkpoint when activations would take over this share of the device


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> Shape:
        hidden = int(config.get("hidden_size", 0))
        heads = int(config.get("num_attention_heads", 1))
        return cls(hidden, int(config.get("intermediate_size", 4 * hidden)), int(config.get("num_hidden_layers", 0)),
                   heads, int(config.get("num_key_value_heads") or heads), int(config.get("vocab_size", 0)),
                   bool(config.get("tie_word_embeddings", False)))

    @property
    def layer_linear_params(self) -> int:
        """Parameters of the projections bitsandbytes quantizes (q, k, v, o, gate, up, down), all layers."""
        kv = self.hidden // self.heads * self.kv_heads
        per_layer = self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate
        return per_layer * self.layers

    @property
    def other_params(self) -> int:
        """Embeddings, lm_head (kept unquantized) and norms."""
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.hidden * (2 * self.layers + 1)


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float
    trainable_state_mb: float
    activations_mb: float
    transient_mb: float
    logits_mb: float
    gradient_checkpointing: bool
    compute_bits: int

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.trainable_state_mb + self.activations_mb + self.transient_mb + self.logits_mb

    def to_dict(self) -> dict:
        out = {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}
        out["total_mb"] = round(self.total_mb, 1)
        return out


def estimate(config: dict, *, trainable: int, batch_size: int, seq_len: int, compute_bits: int,
             quant_bits: int | None, checkpointing: bool, answer_share: float = 0.5) -> MemoryEstimate:
    """Peak training memory for one micro-batch of `batch_size` rows of `seq_len` tokens."""
    shape = Shape.from_config(config)
    elem = compute_bits // 8
    if quant_bits is None:
        weights = (shape.layer_linear_params + shape.other_params) * elem
    else:
        per = _NF4_BYTES if quant_bits == 4 else _INT8_BYTES
        weights = shape.layer_linear_params * per + shape.other_params * elem
    tokens = batch_size * seq_len
    one_layer = tokens * shape.hidden * _ACT_BYTES_PER_HIDDEN[compute_bits]
    if checkpointing:
        activations = tokens * shape.hidden * elem * shape.layers + one_layer
    else:
        activations = one_layer * shape.layers
    transient = one_layer
    if quant_bits is not None:
        transient += 2 * shape.hidden * shape.intermediate * elem
    logits = tokens * answer_share * shape.vocab * (elem + 4 + 4)
    mb = 2**20
    return MemoryEstimate(weights / mb, trainable * _TRAINABLE_BYTES / mb, activations / mb, transient / mb,
                          logits / mb, checkpointing, compute_bits)


def device_memory_bytes(device: str) -> int:
    """Total memory of the device training runs on: the GPU's, or the machine's RAM for CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def decide_checkpointing(requested: str | bool, without: MemoryEstimate, device_bytes: int,
                         quantized: bool) -> tuple[bool, str]:
    """(on?, why) for `training.gradient_checkpointing`. auto: on when the activations kept for backward
    would take over CHECKPOINT_SHARE of the device, or, on a quantized base, outgrow the weights (a 4-bit
    base is chosen to save memory; at batch 8 x 512 its activations were 5x its weights at 7B)."""
    if requested is not True and requested is not False and requested != "auto":
        raise ValueError(f"training.gradient_checkpointing '{requested}' is not auto, true or false")
    if requested is not True and requested is not False:
        act_gb, dev_gb = without.activations_mb / 1024, device_bytes / 2**30
        if without.activations_mb * 2**20 > CHECKPOINT_SHARE * device_bytes:
            return True, f"auto: activations ~{act_gb:.1f} GB > {CHECKPOINT_SHARE:.0%} of the device's {dev_gb:.0f} GB"
        if quantized and without.activations_mb > without.weights_mb:
            return True, (f"auto: activations ~{act_gb:.1f} GB > the quantized weights "
                          f"{without.weights_mb / 1024:.1f} GB")
        return False, f"auto: activations ~{act_gb:.2f} GB fit ({CHECKPOINT_SHARE:.0%} of {dev_gb:.0f} GB)"
    return bool(requested), "set in the spec"
