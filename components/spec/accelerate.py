"""accelerate config files (`training.distributed.config`): read at validate time, to refuse early what the loop cannot do.

The file goes to `accelerate launch --config_file` as is; accelerate turns it into each rank's environment
(ACCELERATE_USE_FSDP, FSDP_VERSION, FSDP_*, ACCELERATE_MIXED_PRECISION, ...) and the ranks build their
`Accelerator` from that (components.training.sharding). Adaptflow reads only the keys below, to fail at `adaptflow validate`
rather than minutes later in a rank:

    distributed_type            MULTI_GPU | MULTI_CPU (DDP: the loop sums gradients itself), FSDP (accelerate
                                shards the model: components.training.sharding); DEEPSPEED and the rest are refused
    use_cpu                     must not be true with FSDP / MULTI_GPU (accelerate would start one process, no torchrun)
    mixed_precision             no | bf16 with FSDP (the loop's fp16 GradScaler does not unscale sharded gradients)
    fsdp_config.fsdp_version    1 or 2
    fsdp_config.fsdp_use_orig_params   not false with FSDP1 (a peft model mixes frozen and trainable weights in one unit)
    fsdp_config.fsdp_activation_checkpointing   refused: use training.gradient_checkpointing (one switch, not two)

Everything else (fsdp_auto_wrap_policy, fsdp_transformer_layer_cls_to_wrap, fsdp_reshard_after_forward,
fsdp_offload_params, fsdp_cpu_ram_efficient_loading, machine_rank, main_process_ip, ...) is accelerate's business.
No import of accelerate or torch here: `validate` stays fast.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

DDP_TYPES = ("MULTI_GPU", "MULTI_CPU")
FSDP_METHODS = ("lora", "dora", "ia3", "loha", "lokr")  # modules beside the base's; tested (tests/components/training/test_fsdp.py)
DOCS = "docs/scale.md"


def read(path: Path) -> dict:
    """The config as a mapping; ValueError naming the file and the fix when it is not one."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"training.distributed.config {path}: not a readable accelerate config ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); write one with `accelerate config "
                         f"--config_file {path}`") from None
    if not isinstance(data, dict):
        raise ValueError(f"training.distributed.config {path}: an accelerate config is a YAML mapping (distributed_type: "
                         f"..., num_processes: ...), not {type(data).__name__}; write one with `accelerate config "
                         f"--config_file {path}`")
    return data


def kind(path: Path) -> str:
    """The config's distributed_type (upper case), checked to be one the loop runs; raises ValueError otherwise."""
    data = read(path)
    where = f"training.distributed.config {path}"
    dtype = str(data.get("distributed_type", "")).upper()
    if not dtype:
        raise ValueError(f"{where}: field `distributed_type` is missing; set it to MULTI_GPU (DDP) or FSDP ({DOCS})")
    if dtype == "DEEPSPEED":
        missing = importlib.util.find_spec("deepspeed") is None
        raise ValueError(
            f"{where}: distributed_type is DEEPSPEED, which adaptflow does not drive: its loop clips, accumulates and "
            "steps itself, while DeepSpeed's engine does all three inside `backward`"
            + (" (and DeepSpeed is not installed here: `pip install deepspeed`, which builds its CUDA ops on first use "
               "and is not an adaptflow dependency)" if missing else "")
            + f"; use distributed_type: FSDP with fsdp_config: {{fsdp_version: 2}}, which shards parameters, gradients "
            f"and optimizer state like ZeRO-3 ({DOCS})")
    if dtype not in (*DDP_TYPES, "FSDP"):
        raise ValueError(f"{where}: distributed_type {dtype} is not supported by adaptflow's loop; use MULTI_GPU "
                         f"(DDP; gloo on CPU, NCCL on GPUs) or FSDP ({DOCS})")
    if dtype != "MULTI_CPU" and data.get("use_cpu") is True:
        raise ValueError(f"{where}: use_cpu is true with distributed_type {dtype}: accelerate then starts one process "
                         "without torchrun; set use_cpu: false (on a machine without GPUs the ranks pick gloo anyway)")
    if dtype == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        if not isinstance(fsdp, dict):
            raise ValueError(f"{where}: fsdp_config must be a mapping (fsdp_version: 2, ...), not {fsdp!r}")
        version = fsdp.get("fsdp_version", 1)
        if version not in (1, 2):
            raise ValueError(f"{where}: fsdp_config.fsdp_version is {version!r}; set it to 2 (or 1)")
        if version == 1 and fsdp.get("fsdp_use_orig_params") in (False, "false", "False"):
            raise ValueError(f"{where}: fsdp_config.fsdp_use_orig_params is false with fsdp_version 1: FSDP1 then "
                             "flattens the frozen base and the trainable adapter of a layer into one parameter, which "
                             "it refuses; set fsdp_use_orig_params: true (or use fsdp_version: 2)")
        precision = str(data.get("mixed_precision", "no")).lower()
        if precision not in ("no", "bf16"):
            raise ValueError(f"{where}: mixed_precision is {precision} with FSDP; the loop's fp16 loss scaler does not "
                             "handle sharded gradients: set mixed_precision to bf16 or no")
        if fsdp.get("fsdp_activation_checkpointing") in (True, "true", "True"):
            raise ValueError(f"{where}: fsdp_config.fsdp_activation_checkpointing is true; remove it and set "
                             "behavior.training.gradient_checkpointing instead (the loop's one switch for it)")
    return dtype


def check(path: Path | None) -> None:
    """Raise ValueError (naming the file, the field and the fix) when the loop cannot run this config."""
    if path is not None and Path(path).exists():  # a missing path is reported by the path check itself
        kind(path)


def problem(path: Path | None, method: str) -> str | None:
    """Why this config cannot train `method` (a message naming the file, the field and the fix), or None."""
    if path is None or not Path(path).exists():
        return None
    try:
        dtype = kind(path)
    except ValueError as exc:
        return str(exc)
    if dtype == "FSDP" and method not in FSDP_METHODS:
        return (f"training.distributed.config {path}: distributed_type FSDP with adapter.method {method}, which is not "
                f"built under FSDP (built and tested: {', '.join(FSDP_METHODS)}); use adapter.method lora, or a "
                "config with distributed_type MULTI_GPU (DDP runs every method)")
    return None
