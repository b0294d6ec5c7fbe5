"""FSDP inside the training loop (components.training.recipe), through accelerate: prepare, gather, restore.

An accelerate config with `distributed_type: FSDP` (training.distributed.config) makes `accelerate launch` set
ACCELERATE_USE_FSDP and FSDP_* in every rank's environment; `accelerator_from_launch` builds the Accelerator from
that, and the loop hands its model and optimizer to `accelerator.prepare`, which shards them as the config says
(accelerate's FullyShardedDataParallelPlugin: fsdp_version, auto wrap policy, reshard after forward, CPU offload,
cpu_ram_efficient_loading). Nothing of FSDP is re-implemented here; what is added is what the loop needs around it:

- gradients: FSDP reduce-scatters and averages them over ranks in `backward`; the loop multiplies each rank's loss
  (already divided by the step's answer tokens over all ranks) by the number of ranks, so the average is the sum
  one process computes. Micro-batches before the step's last run under `accelerator.no_sync`.
- checkpoints and the adapter: torch's `get_state_dict(full_state_dict, cpu_offload, ignore_frozen_params)` gathers
  the trainable tensors and the optimizer state onto rank 0 (the frozen base is never gathered), in the same
  layout a one-process checkpoint has (optimizer state keyed by the trainable parameter's index), so a checkpoint
  resumes on any number of processes, sharded or not; `restore` scatters one back with `set_state_dict`.

accelerate (1.15) selects FSDP only with an accelerator device: on a machine without GPUs its state says MULTI_CPU
whatever the config asks. torch's FSDP (FSDP2 `fully_shard`, and FSDP1) runs on gloo, so there the Accelerator is told
FSDP itself (and, for FSDP1, the device "cpu" rather than "cpu:<rank>", which FSDP1 compares with the parameters').
On CPU the state is gathered onto every rank (`cpu_offload=False`): FSDP1's rank-0-only gather (`cpu_offload=True`)
died with SIGSEGV on rank 0 and a KeyError on rank 1 on gloo (torch 2.13.0+cpu). FSDP1 names parameters
`_fsdp_wrapped_module.<name>`; the loop uses the clean names torch's state-dict API uses.
"""

from __future__ import annotations

import os

import torch


def wants_fsdp() -> bool:
    """Whether `accelerate launch` asked this rank for FSDP (an accelerate config with distributed_type: FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def accelerator_from_launch():
    """The Accelerator the launch configured, for FSDP; None for DDP (the loop syncs gradients itself)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError("the accelerate config asks for DeepSpeed, which adaptflow's loop does not drive; use "
                         "distributed_type: FSDP with fsdp_version: 2 (docs/scale.md)")
    if not wants_fsdp():
        return None
    from accelerate import Accelerator, DistributedType
    from accelerate.utils import FullyShardedDataParallelPlugin

    if torch.cuda.is_available():
        return Accelerator()
    try:
        plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* environment
    except RuntimeError as exc:  # FSDP1's sync_module_states initialises on an accelerator device
        raise ValueError(f"FSDP1 on a machine without GPUs: accelerate says '{exc}' (fsdp_sync_module_states needs a "
                         "device); set fsdp_sync_module_states: false and fsdp_cpu_ram_efficient_loading: false in the "
                         "accelerate config, or use fsdp_version: 2") from None
    accelerator = Accelerator(cpu=True)
    accelerator.state.distributed_type = DistributedType.FSDP  # see the module docstring
    accelerator.state.fsdp_plugin = plugin
    if plugin.fsdp_version == 1:  # FSDP1 wants its device_id to equal the parameters' device: "cpu", not "cpu:<rank>"
        accelerator.state.device = torch.device("cpu")
    return accelerator


def prepare(accelerator, model, optimizer):
    """(sharded model, the torch optimizer over its sharded parameters)."""
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper adds nothing without a scaler


WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter's name without FSDP1's (and activation checkpointing's, torch.compile's) wrapper segments."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def trainable(model) -> dict[str, torch.Tensor]:
    """The trainable parameters of the sharded model by their clean names (as one process names them)."""
    return {clean_name(n): p for n, p in model.named_parameters() if p.requires_grad}


def _options(model=None, **extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if model is not None:  # rank 0 only, offloaded, on GPUs; on CPU every rank gathers (see the module docstring)
        extra["cpu_offload"] = any(p.is_cuda for p in model.parameters())
    return StateDictOptions(full_state_dict=True, **extra)


def gather(model, optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable tensors by name, optimizer state dict with integer keys as one process's `state_dict()`), full,
    on rank 0; empty elsewhere. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options(model, ignore_frozen_params=True))
    if torch.distributed.get_rank() != 0:
        return {}, {}
    missing = [n for n in names if n not in msd]
    if missing:
        raise RuntimeError(f"FSDP's gathered state lacks trainable tensors {missing[:3]}")
    index = {n: i for i, n in enumerate(names)}
    optim = {"state": {index[n]: s for n, s in osd["state"].items()},
             "param_groups": [dict(g, params=[index[n] for n in g["params"]]) for g in osd["param_groups"]]}
    return {n: msd[n] for n in names}, optim


def trainable_state(model, names: list[str]) -> dict[str, torch.Tensor]:
    """The full trainable tensors on rank 0 (empty elsewhere), for saving the adapter. A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    msd = get_model_state_dict(model, options=_options(model, ignore_frozen_params=True))
    return {n: msd[n] for n in names} if torch.distributed.get_rank() == 0 else {}


def restore(model, optimizer, names: list[str], params: dict[str, torch.Tensor], optim: dict) -> None:
    """Load full trainable tensors and a one-process optimizer state dict (as `gather` returns them) into the
    sharded model and optimizer. Every rank calls it with the same checkpoint."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    osd = {"state": {names[int(i)]: s for i, s in optim["state"].items()},
           "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in optim["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=params, optim_state_dict=osd, options=_options(strict=False))


def grad_norm(accelerator, model, max_norm: float) -> torch.Tensor:
    """Clip the sharded gradients to `max_norm` (accelerate's clip_grad_norm_); the total norm as a plain tensor.
    All of the model's parameters go in (the frozen ones have no gradient): accelerate recognises the prepared
    model by them and uses FSDP1's own `clip_grad_norm_`, whose norm spans every rank's shard."""
    norm = accelerator.clip_grad_norm_(list(model.parameters()), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def describe(accelerator, model, total: int) -> dict:
    """What was sharded, for the train record: FSDP version and how much of the model's `total` parameters this
    rank holds (FSDP2: the local parts of its DTensors; FSDP1: its parameters are views of its flat shards)."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    return {"engine": "FSDP (accelerate)", "fsdp_version": accelerator.state.fsdp_plugin.fsdp_version,
            "rank0_parameters": local, "parameters": total}
