"""`adaptflow plan`: what a spec will do, computed without training or allocating weights.

Shows the resolved spec (derived defaults filled in), the route, data statistics after the
chat template, the chosen method's trainable parameters (counted on the meta device), and a
training-memory estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.gates import promotion_rule
from components.route import route
from components.spec import PROMPT_LEARNING, TaskSpec

# Bytes per trainable parameter during training: fp32 weight copy + grad + two AdamW moments.
_BYTES_PER_TRAINABLE = 4 + 4 + 8


def derived_defaults(spec: TaskSpec) -> dict:
    """The defaults we fill in, so a user sees exactly what will run (STYLE.md 6)."""
    out: dict = {}
    if spec.behavior is not None:
        adapter = spec.behavior.adapter
        if hasattr(adapter, "resolved_alpha"):
            out["behavior.adapter.alpha"] = adapter.resolved_alpha
        if spec.behavior.data.eval is None:
            out["behavior.data.eval"] = f"{spec.behavior.data.eval_split:.0%} of train, held out with seed {spec.behavior.training.seed}"
    if spec.knowledge is not None:
        out["knowledge.index.type"] = spec.knowledge.index.type + (
            " (Flat below the measured size threshold, HNSW/IVF above, IVF-PQ over the memory budget)"
            if spec.knowledge.index.type == "auto" else ""
        )
    if spec.evaluation is not None and spec.evaluation.data is None and spec.behavior is not None:
        out["evaluation.data"] = "the behavior eval split"
    return out


def _config_folder(spec: TaskSpec) -> Path | None:
    from components.models import resolve_model

    resolved = resolve_model(spec.base_model, verify=False)
    folder = Path(resolved.path)
    return folder if (folder / "config.json").exists() else None


def data_stats(spec: TaskSpec, folder: Path) -> dict:
    """Token statistics of every example rendered through the model's chat template."""
    from transformers import AutoTokenizer

    from components.data import load_examples, tokenize_examples

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        return {"skipped": f"no tokenizer in {folder} ({type(exc).__name__}); data statistics need one"}
    behavior = spec.behavior
    train, evals = load_examples(behavior.data)  # DataError names file, row and fix
    out = {}
    for split, examples in (("train", train), ("eval", evals)):
        tokenized = tokenize_examples(examples, tokenizer, behavior.training.max_seq_len, behavior.data.over_length)
        out[split] = tokenized.stats.to_dict()
    return out


def memory_estimate(spec: TaskSpec, config: dict, trainable: int, total: int) -> dict:
    """A rough upper bound for training memory, with its parts, in MB."""
    quant = spec.base_model.quantization
    weight_bytes = 4.0 if quant is None else (0.5 + 0.0625 if quant.bits == 4 else 1.0 + 0.03)
    frozen = total - trainable
    training = spec.behavior.training
    seq = training.max_seq_len + (getattr(spec.behavior.adapter, "num_virtual_tokens", 0) or 0)
    hidden, layers = config.get("hidden_size", 0), config.get("num_hidden_layers", 0)
    inter = config.get("intermediate_size", 4 * hidden)
    # Activations kept for backward per token per layer: ~ (10*hidden + 3*intermediate) floats.
    act = training.batch_size * seq * layers * (10 * hidden + 3 * inter) * 4
    logits = training.batch_size * seq * config.get("vocab_size", 0) * 4 * 2
    parts = {
        "weights_mb": frozen * weight_bytes / 2**20,
        "trainable_state_mb": trainable * _BYTES_PER_TRAINABLE / 2**20,
        "activations_mb": act / 2**20,
        "logits_mb": logits / 2**20,
    }
    parts = {k: round(v, 1) for k, v in parts.items()}
    parts["total_mb"] = round(sum(parts.values()), 1)
    return parts


def make_plan(spec: TaskSpec, spec_file: str | None = None) -> dict:
    from components.specload import spec_to_dict

    decision = route(spec)
    plan: dict = {
        "spec_file": spec_file,
        "resolved_spec": spec_to_dict(spec),
        "derived_defaults": derived_defaults(spec),
        "route": decision.to_dict(),
        "notes": [],
    }
    ev = spec.evaluation
    plan["promotion"] = promotion_rule(ev.gates if ev else {}, ev.promote_to if ev else "production")
    if spec.behavior is None:
        return plan
    from components.methods import count_parameters_meta

    folder = _config_folder(spec)
    if folder is None:
        plan["notes"].append(f"no config.json for base model '{spec.base_model.id}': parameter counts skipped")
        return plan
    config = json.loads((folder / "config.json").read_text())
    trainable, total = count_parameters_meta(folder, spec.behavior.adapter)
    plan["parameters"] = {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}
    plan["memory_estimate"] = memory_estimate(spec, config, trainable, total)
    if spec.behavior.adapter.method in PROMPT_LEARNING:
        plan["notes"].append("prompt-learning method: virtual tokens count towards max_seq_len at training time")
    stats = data_stats(spec, folder)
    if "skipped" in stats:
        plan["notes"].append(stats["skipped"])
    else:
        plan["data"] = stats
    return plan
