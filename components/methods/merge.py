"""Merge an adapter into its base: a full-precision model folder, never 4-bit weights plus a delta.

peft can merge LoRA into bitsandbytes layers by dequantizing, adding and re-quantizing each
weight in place, which silently rounds the adapter away. Instead: a quantized base is
dequantized to float32 first (the exact weights training saw), the adapter merged into those,
and the result saved in float32 safetensors (or bfloat16 when asked: a cast of the float32 merge, for
engines that load it). Re-quantizing is an explicit, separate option.
Each step's logit drift against the served model (base + adapter, unmerged) is reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftMixedModel, PeftModel

from components.methods import hybrid
from components.methods.io import METHOD_FILE, load_adapter
from components.methods.registry import is_quantized
from components.spec import PROMPT_LEARNING, BaseModelSpec, QuantizationSpec

PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "My order has not arrived yet and the tracking number does not work.",
]


@dataclass
class MergeReport:
    out_dir: str
    method: str
    dequantized_base: bool  # the base was 4/8-bit and was dequantized to float32 before merging
    dtype: str
    max_logit_drift: float  # merged float32 model vs base + adapter, unmerged
    requantized_bits: int | None = None
    requantized_logit_drift: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _method(adapter_dir: Path) -> str:
    marker = adapter_dir / METHOD_FILE
    if marker.exists():
        return json.loads(marker.read_text())["method"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(config.get("peft_type", "unknown")).lower()


def hybrid_kind(adapter_dir: Path) -> str | None:
    """'mixed' (low-rank tuners together: mergeable) or 'prompt' (a soft prompt part) for a hybrid, else None."""
    manifest = Path(adapter_dir) / hybrid.MANIFEST
    return json.loads(manifest.read_text())["kind"] if manifest.exists() else None


def _probe_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    if tokenizer is None:
        return torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    return tokenizer(PROBE_TEXTS, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()


def _has_quantized_layers(model) -> bool:
    return any(type(p).__name__ in {"Params4bit", "Int8Params"} for p in model.parameters())


def merge_adapter(
    base_model, adapter_dir: Path, out_dir: Path, *, tokenizer=None, requantize: QuantizationSpec | None = None,
    dtype: torch.dtype = torch.float32,
) -> MergeReport:
    """Merge `adapter_dir` into `base_model` (as `load_model` returns it, 4-bit or not) and save a
    float32 model folder at `out_dir` (`dtype` casts the float32 merge before saving; the drift reported is
    the float32 merge's); optionally reload it re-quantized and report that drift too."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    method = _method(adapter_dir)
    if method in PROMPT_LEARNING:
        raise ValueError(
            f"{adapter_dir}: a {method} adapter adds virtual tokens, not weight deltas, so there is nothing to merge; "
            "serve the base model with the adapter (components.methods.io.load_adapter) instead"
        )
    if hybrid_kind(adapter_dir) == "prompt":
        raise ValueError(
            f"{adapter_dir}: this hybrid's soft prompt adds virtual tokens, which no weight can hold, so it cannot be "
            "merged; serve the base model with the adapter (components.methods.io.load_adapter) instead"
        )
    ids = _probe_ids(tokenizer, base_model.config.vocab_size)
    quantized, device = is_quantized(base_model), next(base_model.parameters()).device
    tuned = load_adapter(base_model, adapter_dir)
    reference = _logits(tuned, ids)  # what is served: base (as loaded) + adapter
    if isinstance(tuned, PeftModel | PeftMixedModel):  # a mixed model: a hybrid of low-rank tuners
        base = tuned.unload()  # drop the adapter layers, keep the base untouched
        if quantized:
            base = base.dequantize(dtype=torch.float32)  # the weights training saw, in float32
        merged = load_adapter(base, adapter_dir).merge_and_unload()
    else:
        merged = tuned  # selective/full adapters already are the weights
    if _has_quantized_layers(merged):
        raise RuntimeError("merge produced 4-bit/8-bit layers; refusing to save a merge into quantized weights")
    merged = merged.to(torch.float32)
    drift = (_logits(merged, ids) - reference).abs().max().item()
    report = MergeReport(str(out_dir), method, quantized, str(dtype).removeprefix("torch."), drift)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if requantize is not None:
        from components.models.load import load_model

        requantized = load_model(BaseModelSpec(id=str(out_dir), quantization=requantize), device=device.type)
        report.requantized_bits = requantize.bits
        report.requantized_logit_drift = (_logits(requantized, ids) - reference).abs().max().item()
    (out_dir / "merge_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
