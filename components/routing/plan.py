"""`adaptflow plan`: what a spec will do, computed without training or allocating weights.

Shows the resolved spec (derived defaults filled in), the route, data statistics after the
chat template, the chosen method's trainable parameters (counted on the meta device), and a
training-memory estimate.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from components.evaluation.gates import promotion_rule
from components.routing.route import route
from components.spec import PROMPT_LEARNING, TaskSpec

if TYPE_CHECKING:
    from components.models.target_modules import ModuleChoice


def derived_defaults(spec: TaskSpec) -> dict:
    """The defaults we fill in, so a user sees exactly what will run: none is filled in silently."""
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
    from components.models.load import resolve_model

    resolved = resolve_model(spec.base_model, verify=False)
    folder = Path(resolved.path)
    return folder if (folder / "config.json").exists() else None


def data_stats(spec: TaskSpec, folder: Path) -> dict:
    """Token statistics of every example rendered through the model's chat template."""
    from transformers import AutoTokenizer

    from components.models.load import chat_template_text
    from components.training.data import load_examples, tokenize_examples

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        return {"skipped": f"no tokenizer in {folder} ({type(exc).__name__}); data statistics need one"}
    if spec.base_model.chat_template is not None:  # as components.models.load.load_tokenizer applies it
        tokenizer.chat_template = chat_template_text(spec.base_model.chat_template)
    behavior = spec.behavior
    train, evals = load_examples(behavior.data)  # DataError names file, row and fix
    out = {}
    for split, examples in (("train", train), ("eval", evals)):
        if not examples:  # eval_split 0 and no eval file: nothing to count (tokenizing none reads as "all dropped")
            continue
        tokenized = tokenize_examples(examples, tokenizer, behavior.training.max_seq_len, behavior.data.over_length)
        out[split] = tokenized.stats.to_dict()
    return out


# How far the estimate was from measured peaks (docs/memory.md): H200, Llama-2-7B shape, r=8 q,v, 512 tokens.
ESTIMATE_ERROR = "-4 % to +6 % against torch.cuda.max_memory_allocated on an H200 at the Llama-2-7B shape (docs/memory.md)"
ASSUMED_GPU_GB = 80  # planning for a GPU from a machine without one


def memory_estimate(spec: TaskSpec, config: dict, trainable: int, device: str, stats: dict | None = None) -> dict:
    """Training memory on `device` (cpu | cuda) for the spec's precision and checkpointing, in MB, with the
    `gradient_checkpointing: auto` decision and the total of the other choice."""
    import torch

    from components.models.precision import DTYPES
    from components.training import memory

    training = spec.behavior.training
    name = training.precision if training.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    bits = torch.finfo(DTYPES[name]).bits
    seq = training.max_seq_len
    answer_share = 0.5
    if stats and "train" in stats and not training.packing:
        seq = min(seq, stats["train"]["max"])  # grouped batches are as long as their longest row
        answer_share = stats["train"]["answer_tokens"] / max(1, stats["train"]["tokens"])
    seq += getattr(spec.behavior.adapter, "num_virtual_tokens", 0) or 0
    quant = spec.base_model.quantization
    common = dict(trainable=trainable, batch_size=training.batch_size, seq_len=seq, compute_bits=bits,
                  quant_bits=quant.bits if quant else None, answer_share=answer_share)
    without = memory.estimate(config, checkpointing=False, **common)
    with_ckpt = memory.estimate(config, checkpointing=True, **common)
    if device == "cuda" and not torch.cuda.is_available():
        device_bytes, device_note = ASSUMED_GPU_GB * 2**30, "no GPU here: assumed"
    else:
        device_bytes, device_note = memory.device_memory_bytes(device), "this machine,"
    enabled, why = memory.decide_checkpointing(training.gradient_checkpointing, without, device_bytes, quant is not None)
    chosen, other = (with_ckpt, without) if enabled else (without, with_ckpt)
    return {
        "device": f"{device} ({device_note} {device_bytes / 2**30:.0f} GB)", "compute_dtype": name,
        **chosen.to_dict(),
        "gradient_checkpointing": {"requested": training.gradient_checkpointing, "enabled": enabled, "why": why},
        "other_choice_total_mb": round(other.total_mb, 1),
        "error": ESTIMATE_ERROR,
    }


FINETUNE_KEY = ("knowledge", "finetune", "adapter")
FINETUNE_DEFAULT = "knowledge.finetune's default: every linear layer but the output head"


def module_plan(spec: TaskSpec, folder: Path, spec_file: str | None) -> list[ModuleChoice]:
    """The modules the adapter wraps on this base (an unset target_modules filled in from the architecture); a
    name the model does not have is a spec error naming the file, the line and the key. With `knowledge.inject:
    finetune | both`, the adapter is `knowledge.finetune.adapter`."""
    from components.methods.registry import module_choices_meta
    from components.models.target_modules import ADAPTER_KEY, TargetModulesError
    from components.spec.load import spec_error_at

    trained_docs = spec.behavior is None
    adapter, loc = (spec.knowledge.finetune.adapter, FINETUNE_KEY) if trained_docs else (spec.behavior.adapter,
                                                                                       ADAPTER_KEY)
    try:
        choices = module_choices_meta(folder, adapter, loc)
    except TargetModulesError as exc:
        if spec_file is None:
            raise
        raise spec_error_at(spec_file, exc.loc, exc.detail) from None
    if trained_docs and "adapter" not in spec.knowledge.finetune.model_fields_set:  # the default: say so in derived defaults
        choices = [dataclasses.replace(c, source=FINETUNE_DEFAULT) for c in choices]
    return choices


def _injects(spec: TaskSpec) -> bool:
    return spec.knowledge is not None and spec.knowledge.inject != "rag"


def knowledge_finetune_plan(spec: TaskSpec, plan: dict, spec_file: str | None) -> dict:
    """`inject: finetune | both` on a spec without `behavior:`: the modules and trainable parameters of
    `knowledge.finetune.adapter` on this base."""
    from components.methods.registry import count_parameters_meta

    folder = _config_folder(spec)
    if folder is None:
        plan["notes"].append(f"no config.json for base model '{spec.base_model.id}': parameter counts skipped")
        return plan
    choices = module_plan(spec, folder, spec_file)
    if choices:
        plan["target_modules"] = [c.to_dict() for c in choices]
    for choice in choices:
        plan["derived_defaults"].update(choice.derived())
    trainable, total = count_parameters_meta(folder, spec.knowledge.finetune.adapter)
    plan["parameters"] = {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}
    return plan


def make_plan(spec: TaskSpec, spec_file: str | None = None, device: str | None = None) -> dict:
    from components.spec.load import spec_to_dict

    decision = route(spec)
    plan: dict = {
        "spec_file": spec_file,
        "resolved_spec": spec_to_dict(spec),
        "derived_defaults": derived_defaults(spec),
        "route": decision.to_dict(),
        "notes": [],
    }
    if spec.goal == "auto" and spec.evaluation is not None:  # flows/keys.py wants_probe
        plan["notes"].append("goal auto with an evaluation set: `run` measures the route first (a probe of the base "
                             "model on up to 16 evaluation items; docs/routing.md); the route above is the declared one")
    ev = spec.evaluation
    plan["promotion"] = promotion_rule(ev.gates if ev else {}, ev.promote_to if ev else "production")
    if spec.knowledge is not None:
        plan["answers"] = reading_plan(spec)  # knowledge.reader_model (issue 24)
    if spec.behavior is None:
        return knowledge_finetune_plan(spec, plan, spec_file) if _injects(spec) else plan
    from components.methods.registry import count_parameters_meta

    folder = _config_folder(spec)
    if folder is None:
        plan["notes"].append(f"no config.json for base model '{spec.base_model.id}': parameter counts skipped")
        return plan
    config = json.loads((folder / "config.json").read_text())
    choices = module_plan(spec, folder, spec_file)
    if choices:
        plan["target_modules"] = [c.to_dict() for c in choices]
    for choice in choices:
        plan["derived_defaults"].update(choice.derived())
    trainable, total = count_parameters_meta(folder, spec.behavior.adapter)
    plan["parameters"] = {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}
    if spec.behavior.adapter.method in PROMPT_LEARNING:
        plan["notes"].append("prompt-learning method: virtual tokens count towards max_seq_len at training time")
    stats = data_stats(spec, folder)
    if "skipped" in stats:
        plan["notes"].append(stats["skipped"])
    else:
        plan["data"] = stats
    from components.models.precision import default_device

    plan["memory_estimate"] = memory_estimate(spec, config, trainable, device or default_device(), plan.get("data"))
    return plan


def reading_plan(spec: TaskSpec) -> dict:
    """Which model writes the knowledge answers (`knowledge.reader_model`, else `base_model`), resolved, and the
    reading adapter on it."""
    from components.models.load import BUILTIN_MODELS, resolve_model
    from components.training.reader import reader_mode

    model = spec.reading_model
    resolved = resolve_model(model, verify=False)
    builtin = BUILTIN_MODELS.get(model.id)
    template = model.chat_template or (builtin.chat_template if builtin else None) or "the tokenizer's own"
    return {"model": model.id, "from": "knowledge.reader_model" if model is not spec.base_model else "base_model",
            "path": str(resolved.path), "weights_hash": resolved.weights_hash, "chat_template": template,
            "reader": reader_mode(spec) or "none"}
