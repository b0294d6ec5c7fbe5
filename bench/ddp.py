"""ddp_equivalence: max abs difference between the adapters of 2-process and 1-process training (fp32), and
the 2-process / 1-process wall-time ratio; fsdp_equivalence: the same for 2 processes under FSDP2 (an accelerate
config with distributed_type FSDP, fsdp_version 2, layers wrapped one by one; gloo on CPU), and fsdp1_max_abs_diff_*
for FSDP1.

    .venv/bin/python -m bench.ddp                                   # the tiny random Llama, 2 learning rates
    ADAPTFLOW_BENCH_DDP_MODEL=builtin ADAPTFLOW_BENCH_DDP_STEPS=4 .venv/bin/python -m bench.ddp

The same spec is trained twice: in this process with 1 torch thread (the loop as `adaptflow run` runs it)
and through `accelerate launch` on 2 processes x 1 thread (gloo), same global batch (8 = 2 x 4 per process).
LoRA dropout is 0 (each process draws its own dropout masks). The difference is reported at the spec's
default learning rate (2e-4) and at 1e-2 (the tests' rate): Adam divides each gradient element by its own
running magnitude, so a float-rounding difference in an element whose gradient is near zero becomes a
difference of up to ~lr in the weight; the gap grows with lr. Times: `train_seconds` (time in optimizer
steps, the same counter for both) and the wall time of the whole training call (for 2 processes: starting
the launcher and the ranks and loading the model in each).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LRS = (2.0e-4, 1.0e-2)


def _rows(n: int) -> list[dict]:
    labels = ("billing", "bug", "account", "shipping")
    return [{"messages": [{"role": "user", "content": f"Ticket {i}: " + "my order is late and " * (1 + i % 5) + "?"},
                          {"role": "assistant", "content": labels[i % 4] + (" (urgent)" if i % 3 == 0 else "")}]}
            for i in range(n)]


def _model_dir(tmp: Path, which: str) -> tuple[str, str]:
    """(base_model id, description)."""
    if which == "builtin":
        return "smollm2-135m-instruct", "SmolLM2-135M-Instruct (built-in)"
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from components.models.load import builtin_model_dir

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir(verify=False))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    folder = tmp / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), "random Llama, 4 layers, hidden 256 (built in this run)"


def _fsdp_config(tmp: Path, version: int = 2) -> Path:
    import yaml

    from components.training.distributed import _free_port

    path = tmp / f"fsdp{version}.yaml"
    v1 = {"fsdp_reshard_after_forward": "FULL_SHARD", "fsdp_use_orig_params": True, "fsdp_sync_module_states": False,
          "fsdp_cpu_ram_efficient_loading": False}  # FSDP1 on CPU: no device to sync module states on
    path.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "no",
        "fsdp_config": {"fsdp_version": version, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer", "fsdp_reshard_after_forward": True,
                        **(v1 if version == 1 else {})},
        "machine_rank": 0, "num_machines": 1, "num_processes": 2, "main_process_port": _free_port(), "use_cpu": False}))
    return path


def _spec(model_id: str, data: Path, lr: float, steps: int, processes: int | None, config: Path | None = None):
    from components.spec import TaskSpec

    dist = {"distributed": {"processes": processes, "config": str(config) if config else None}} if processes else {}
    return TaskSpec.model_validate({
        "name": "bench-ddp", "goal": "behavior", "base_model": {"id": model_id, "allow_outside_workspace": True},
        "behavior": {"data": {"train": str(data), "eval": str(data)},
                     "adapter": {"method": "lora", "r": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                     "training": {"max_steps": steps, "batch_size": 8, "lr": lr, "seed": 0, "precision": "fp32",
                                  "max_seq_len": 128, "eval_every": steps, **dist}}})


def _one_process(spec, out: Path) -> tuple[dict, float]:
    import torch

    from components.models.load import load_model, load_tokenizer, resolve_model
    from components.training.recipe import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    resolved = resolve_model(spec.base_model)
    tokenizer = load_tokenizer(spec.base_model, resolved)
    record = train(load_model(spec.base_model, resolved, precision="fp32"), tokenizer, spec.behavior, out)
    return record.to_dict(), time.perf_counter() - start


def _two_processes(spec, out: Path) -> tuple[dict, float]:
    from components.training import distributed

    start = time.perf_counter()
    record = distributed.launch(spec, out, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return record, time.perf_counter() - start


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "adapter" / "adapter_model.safetensors"), load_file(b / "adapter" / "adapter_model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def run() -> dict:
    which = os.environ.get("ADAPTFLOW_BENCH_DDP_MODEL", "tiny")
    steps = int(os.environ.get("ADAPTFLOW_BENCH_DDP_STEPS", "20"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _rows(64)))
        model_id, described = _model_dir(tmp, which)
        for lr in LRS:
            one, one_wall = _one_process(_spec(model_id, data, lr, steps, None), tmp / f"one-{lr}")
            two, two_wall = _two_processes(_spec(model_id, data, lr, steps, 2), tmp / f"two-{lr}")
            fsdp, fsdp_wall = _two_processes(_spec(model_id, data, lr, steps, 2, _fsdp_config(tmp)), tmp / f"fsdp-{lr}")
            tag = f"lr_{lr:g}"
            out[f"fsdp_max_abs_diff_{tag}"] = _max_diff(tmp / f"one-{lr}", tmp / f"fsdp-{lr}")
            out[f"fsdp_max_loss_diff_{tag}"] = max(abs(a[1] - b[1]) for a, b in
                                                   zip(one["loss_curve"], fsdp["loss_curve"], strict=True))
            out[f"fsdp_rank0_parameter_share_{tag}"] = round(fsdp["sharding"]["rank0_parameters"]
                                                             / fsdp["sharding"]["parameters"], 3)
            out[f"fsdp_train_seconds_2proc_{tag}"] = round(fsdp["train_seconds"], 2)
            out[f"fsdp_wall_seconds_2proc_{tag}"] = round(fsdp_wall, 2)
            _two_processes(_spec(model_id, data, lr, steps, 2, _fsdp_config(tmp, 1)), tmp / f"fsdp1-{lr}")
            out[f"fsdp1_max_abs_diff_{tag}"] = _max_diff(tmp / f"one-{lr}", tmp / f"fsdp1-{lr}")
            out[f"ddp_max_abs_diff_{tag}"] = _max_diff(tmp / f"one-{lr}", tmp / f"two-{lr}")
            out[f"ddp_max_loss_diff_{tag}"] = max(abs(a[1] - b[1]) for a, b in
                                                  zip(one["loss_curve"], two["loss_curve"], strict=True))
            out[f"ddp_train_seconds_1proc_{tag}"] = round(one["train_seconds"], 2)
            out[f"ddp_train_seconds_2proc_{tag}"] = round(two["train_seconds"], 2)
            out[f"ddp_wall_seconds_1proc_{tag}"] = round(one_wall, 2)
            out[f"ddp_wall_seconds_2proc_{tag}"] = round(two_wall, 2)
    out["ddp_equivalence"] = out[f"ddp_max_abs_diff_lr_{LRS[0]:g}"]  # the spec's default learning rate
    out["fsdp_equivalence"] = out[f"fsdp_max_abs_diff_lr_{LRS[0]:g}"]
    tag = f"lr_{LRS[0]:g}"
    out["ddp_train_speedup_2v1"] = round(out[f"ddp_train_seconds_1proc_{tag}"] / out[f"ddp_train_seconds_2proc_{tag}"], 3)
    out["ddp_wall_speedup_2v1"] = round(out[f"ddp_wall_seconds_1proc_{tag}"] / out[f"ddp_wall_seconds_2proc_{tag}"], 3)
    out["setup"] = (f"{described}; {steps} steps, global batch 8 (2 x 4 per process), LoRA r 8 q,v, fp32; 1 process "
                    f"x 1 thread vs 2 processes x 1 thread (gloo; DDP, and FSDP2 and FSDP1 through accelerate configs) on "
                    f"{os.cpu_count()} cores; "
                    f"load average {os.getloadavg()[0]:.1f} at the end")
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
