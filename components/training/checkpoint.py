"""Training checkpoints in safetensors + JSON (no pickle), written atomically.

A checkpoint is a folder `checkpoints/step-000120/` holding the trainable tensors, the optimizer
state (tensors in safetensors, the rest in JSON), the scheduler state, the RNG states, the data
position and the loss history. It is built in a temp folder, every file is fsynced, and
`complete.json` (the sha256 of every other file) is written last before the folder is renamed
into place (components.store.fileio.publish_verified_dir). On resume the newest folder whose
`complete.json` exists and whose hashes match wins; a torn one (killed mid-write, truncated,
edited) is reported and skipped.

A checkpoint is also *good* only if the loss of its step was finite and its trainable weights
are finite and bounded (max |w| <= MAX_ABS_WEIGHT): a run that diverged once left a "last good"
checkpoint holding weights of ~1e37, and resuming from it diverged again. `complete.json`
records this `health`; an unhealthy checkpoint is kept for inspection but never resumed from.
When training diverges, `diverged.json` is written next to the checkpoints, and a re-run of the
same stage refuses to resume silently into the state that diverged (`previous_divergence`).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.store.fileio import atomic_write_json, json_text, publish_verified_dir, verify_dir

PREFIX, COMPLETE, DIVERGED = "step-", "complete.json", "diverged.json"
# Trainable weights of a healthy run stay O(1): LoRA factors ~1e-2, full fine-tuning < 1e2 (the tiny test
# model at lr 10 for 40 steps, the largest step Adam takes within the spec's bounds, reached 235). 1e4 leaves
# room for any sane run and catches the ~1e37 weights a diverging run left behind.
MAX_ABS_WEIGHT = 1e4


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json_text(data, indent=1, sort_keys=True))


# --- optimizer / scheduler / RNG <-> tensors + JSON ------------------------------------------


def _optimizer_split(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()  # a dict: gathered (components.training.sharding)
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return tensors


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(tensors: dict[str, torch.Tensor], python_state: list) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_state
    random.setstate((version, tuple(internal), gauss))


# --- health: finite loss, finite and bounded weights ------------------------------------------


def weights_health(params: dict[str, torch.Tensor], loss: float | None) -> dict:
    """{finite, max_abs, norm, loss} of the trainable tensors."""
    finite, max_abs, sq = True, 0.0, 0.0
    with torch.no_grad():
        for p in params.values():
            t = p.detach()
            if not t.numel():
                continue
            finite = finite and bool(torch.isfinite(t).all())
            if finite:
                max_abs = max(max_abs, float(t.abs().max()))
                sq += float(torch.linalg.vector_norm(t.float())) ** 2
    return {"finite": finite, "max_abs": max_abs if finite else None, "norm": math.sqrt(sq) if finite else None,
            "loss": loss}


def health_problem(health: dict) -> str | None:
    """Why a checkpoint with this health is not good, or None."""
    if health.get("loss") is not None and not math.isfinite(health["loss"]):
        return f"its step's loss was {health['loss']}"
    if not health.get("finite", False):
        return "its weights hold NaN or inf"
    if health["max_abs"] > MAX_ABS_WEIGHT:
        return f"its weights reach {health['max_abs']:.3g} (bound {MAX_ABS_WEIGHT:g}): the run was diverging"
    return None


def _last_loss(trainer_state: dict) -> float | None:
    curve = trainer_state.get("loss_curve") or []
    return float(curve[-1][1]) if curve else None


# --- save / find / load ----------------------------------------------------------------------


def save_checkpoint(
    root: Path, step: int, *, params: dict[str, torch.Tensor], optimizer, scheduler, trainer_state: dict,
    method_tensors: dict[str, torch.Tensor] | None = None, method_meta: dict | None = None, keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` complete ones."""
    final = root / f"{PREFIX}{step:06d}"
    for stale in root.glob(f".{PREFIX}*.tmp-*"):  # left by a killed run (one trainer writes a checkpoint folder)
        shutil.rmtree(stale, ignore_errors=True)
    health = weights_health(params, _last_loss(trainer_state))

    def fill(tmp: Path) -> None:
        opt_tensors, opt_meta = _optimizer_split(optimizer)
        save_file({n: p.detach().contiguous().cpu() for n, p in params.items()}, tmp / "trainable.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file(_rng_tensors(), tmp / "rng.safetensors")
        save_file(method_tensors or {}, tmp / "method.safetensors")
        _write_json(tmp / "optimizer.json", opt_meta)
        _write_json(tmp / "scheduler.json", scheduler.state_dict())
        _write_json(tmp / "trainer_state.json", {**trainer_state, "python_rng": _python_rng()})
        _write_json(tmp / "method.json", method_meta or {})

    def record(facts: dict[str, dict]) -> dict:
        return {"step": step, "files": {name: f["sha256"] for name, f in facts.items()}, "health": health}

    publish_verified_dir(final, fill, COMPLETE, record, text=lambda data: json_text(data, indent=1, sort_keys=True))
    good = [c for c in complete_checkpoints(root) if _recorded_health_ok(c)]
    for old in good[:-keep]:  # unhealthy ones never push a good one out
        shutil.rmtree(old, ignore_errors=True)
    return final


def _recorded_health_ok(folder: Path) -> bool:
    try:
        return health_problem(json.loads((folder / COMPLETE).read_text())["health"]) is None
    except (OSError, ValueError, KeyError, TypeError):
        return True  # written before health was recorded: checked from its tensors on resume


def is_complete(folder: Path) -> bool:
    marker = folder / COMPLETE
    if not marker.exists():
        return False
    try:
        return not verify_dir(folder, json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (hashes are checked only when resuming)."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / COMPLETE).exists())


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (torn, altered, non-finite or exploded), or None when it is good."""
    if not is_complete(folder):
        return "torn: incomplete or failed its hash check"
    marker = json.loads((folder / COMPLETE).read_text())
    health = marker.get("health")
    if health is None:  # an older checkpoint: measure its tensors
        state = json.loads((folder / "trainer_state.json").read_text())
        health = weights_health(load_file(folder / "trainable.safetensors"), _last_loss(state))
    return health_problem(health)


def latest_checkpoint(root: Path, log=print) -> Path | None:
    """The newest good checkpoint (complete, intact, finite, bounded); the others are reported and skipped."""
    if not root.exists():
        return None
    for folder in sorted((p for p in root.iterdir() if p.name.startswith(PREFIX)), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if problem.startswith("torn"):
            log(f"[adaptflow] skipping torn checkpoint {folder} (incomplete or failed its hash check)")
        else:
            log(f"[adaptflow] skipping checkpoint {folder}: {problem}")
    return None


# --- divergence ------------------------------------------------------------------------------


def record_divergence(root: Path, step: int, what: str, lr: float) -> Path | None:
    """Write `diverged.json` next to the checkpoints; return the newest good checkpoint (kept)."""
    root.mkdir(parents=True, exist_ok=True)
    good = latest_checkpoint(root, log=lambda _msg: None)
    record = {"step": step, "what": what, "lr": lr, "last_good": good.name if good else None}
    atomic_write_json(root / DIVERGED, record, indent=1, sort_keys=True)
    return good


def previous_divergence(root: Path) -> str | None:
    """The message for a re-run of a stage that diverged before (same spec, same state), or None."""
    try:
        record = json.loads((root / DIVERGED).read_text())
    except (OSError, ValueError):
        return None
    lr = float(record.get("lr") or 0)
    resume = f"resume from {root / record['last_good']}" if record.get("last_good") else "start over"
    return (
        f"this training stage diverged before (step {record.get('step')}: {record.get('what')}, lr {lr:g}); running "
        f"the unchanged spec again would {resume} and diverge the same way. Lower training.lr, e.g. to {lr / 4:g} "
        f"(a changed spec trains afresh), or to retry anyway delete {root / DIVERGED}"
    )


def load_checkpoint(folder: Path, *, params: dict[str, torch.Tensor], optimizer, scheduler,
                    restore: Callable[[dict, dict], None] | None = None) -> tuple[dict, dict, dict]:
    """Restore tensors, optimizer, scheduler and RNG in place; return (trainer_state, method tensors, method meta).
    `restore(tensors, optimizer_state)` replaces the in-place copy (sharded parameters: components.training.sharding)."""
    saved = load_file(folder / "trainable.safetensors")
    if set(saved) != set(params):
        missing = sorted(set(params) ^ set(saved))[:3]
        raise ValueError(
            f"{folder}: the checkpoint's trainable tensors do not match this model/method (e.g. {missing}); "
            "it was written by a different spec: delete the checkpoints folder or restore that spec"
        )
    opt_meta = json.loads((folder / "optimizer.json").read_text())
    optim = _optimizer_join(load_file(folder / "optimizer.safetensors"), opt_meta)
    if restore is not None:
        restore(saved, optim)
    else:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])
        optimizer.load_state_dict(optim)
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    trainer_state = json.loads((folder / "trainer_state.json").read_text())
    _restore_rng(load_file(folder / "rng.safetensors"), trainer_state.pop("python_rng"))
    return trainer_state, load_file(folder / "method.safetensors"), json.loads((folder / "method.json").read_text())
