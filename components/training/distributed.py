"""Training on several processes: `accelerate launch` around the one loop in components.training.recipe.

    parent (a flow task, a bench, a test): launch(spec, out_dir) writes job.json, starts
        python -m components.training.distributed launch  ->  accelerate launch (torchrun) -> N ranks
        each rank: python -m components.training.distributed rank job.json  ->  components.training.recipe.train(...)
    and follows it: rank 0's progress lines are relayed, a failure comes back as the rank's own error,
    and any exit of the parent (an error, Ctrl-C, SIGTERM) stops the launcher and every rank.

Inside the loop (components.training.recipe) a `Ranks` (components.training.ranks) says who this process is. Each optimizer step's micro-batches
are the single-process ones, split by rank (`shard`); the loss is divided by the answer-token count summed
over all ranks, and the gradients are summed over ranks once per step (`sum_grads`), so every rank holds the
gradient one process would compute and takes the same optimizer step. Only rank 0 writes checkpoints, the
adapter and the record; the others wait at a barrier. An accelerate config asking for FSDP is honoured by
accelerate itself: the rank builds its Accelerator from the launch's environment and the loop shards the model
through `accelerator.prepare` (components.training.sharding).

No rank outlives its parent: the launcher and each rank ask Linux for a signal when their parent dies
(PR_SET_PDEATHSIG), so a SIGKILLed flow process leaves no trainer behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch

from components.store.fileio import atomic_write_json

PROGRESS = "ADAPTFLOW_DDP_PROGRESS "  # rank 0's stdout line carrying training progress as JSON
ERROR_FILE = "rank-error.json"  # rank 0's failure, re-raised by the parent as the same kind of error
LOG_FILE = "launch.log"
LOG_TAIL = 40
STOP_GRACE_S = 15.0


class DistributedLaunchError(RuntimeError):
    """The launcher or a rank failed without a recorded error; the message carries the log tail."""


# --- the parent: launch and follow -----------------------------------------------------------------


def wanted(spec) -> bool:
    """Whether the spec's training goes through `accelerate launch` (more than one process, or a config)."""
    dist = spec.behavior.training.distributed if spec.behavior else None
    return dist is not None and (dist.processes > 1 or dist.config is not None)


def with_processes(spec, processes: int | None):
    """`spec` with `training.distributed.processes` set (`--processes N`); None leaves it as written."""
    from pydantic import ValidationError

    from components.spec import TrainingSpec

    if processes is None:
        return spec
    if spec.behavior is None:
        raise ValueError(f"--processes {processes}: spec '{spec.name}' trains nothing (no `behavior:` section); "
                         "drop --processes")
    training = spec.behavior.training
    config = training.distributed.config if training.distributed else None
    try:
        training = TrainingSpec.model_validate(
            training.model_dump() | {"distributed": {"processes": processes, "config": config}})
    except ValidationError as exc:
        raise ValueError(f"--processes {processes}: " + "; ".join(e["msg"].removeprefix("Value error, ")
                                                                 for e in exc.errors())) from None
    return spec.model_copy(update={"behavior": spec.behavior.model_copy(update={"training": training})})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_args(dist, job: Path) -> list[str]:
    """`accelerate launch` arguments. Without a config: one machine, N processes through torchrun
    (`--multi_gpu` is accelerate's torchrun path; on a machine without GPUs the ranks pick gloo)."""
    if dist.config is not None:
        head = ["--config_file", str(dist.config), "--num_processes", str(dist.processes)]
    else:
        head = ["--multi_gpu", "--num_processes", str(dist.processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return [*head, "--module", "components.training.distributed", "rank", str(job)]


def _check_devices(dist, env: dict[str, str]) -> None:
    gpus = 0 if env.get("CUDA_VISIBLE_DEVICES") == "" else torch.cuda.device_count()  # "": the ranks see none
    if dist.config is None and gpus and dist.processes > gpus:
        raise ValueError(
            f"training.distributed.processes is {dist.processes} but this machine has {gpus} GPU(s) (one process "
            f"per GPU); set processes to {gpus} or fewer, or pass an accelerate config (training.distributed.config) "
            "for several machines, or train on the CPU with CUDA_VISIBLE_DEVICES=''")


def launch(spec, out_dir: Path, *, progress: Callable[[int, int, dict], None] | None = None,
           env: dict[str, str] | None = None) -> dict:
    """Train `spec`'s adapter into `out_dir` on `training.distributed.processes` processes; return the
    train record rank 0 wrote. Raises the rank's error (TrainingDivergedError, GenerationCheckError, ...)."""
    dist, child_env = spec.behavior.training.distributed, _env(env)
    _check_devices(dist, child_env)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ERROR_FILE).unlink(missing_ok=True)
    job = out_dir / "ddp-job.json"
    job.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "out_dir": str(out_dir.resolve())}, indent=1))
    cmd = [sys.executable, "-m", "components.training.distributed", "launch", *launch_args(dist, job)]
    log = out_dir / LOG_FILE
    print(f"[adaptflow] training on {dist.processes} processes: accelerate launch "
          f"{' '.join(launch_args(dist, job))} (log {log})", flush=True)
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env,
                                start_new_session=True)  # its own group: stopped as one, whatever the terminal does
        try:
            _follow(proc, progress)
        finally:
            stop(proc)
    return _result(proc.returncode, out_dir, log)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ) | (extra or {})
    repo = str(Path(__file__).resolve().parents[2])  # the ranks import this checkout's components
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _follow(proc: subprocess.Popen, progress) -> None:
    for line in proc.stdout:
        if line.startswith(PROGRESS):
            info = json.loads(line[len(PROGRESS):])
            if progress is not None:
                progress(info["step"], info["total"], info["metrics"])
        else:
            print(line.rstrip(), flush=True)
    proc.wait()


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the launcher's process group (torchrun then stops its ranks), SIGKILL after `grace`; the ranks
    die with the launcher in any case (PR_SET_PDEATHSIG)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _result(code: int, out_dir: Path, log: Path) -> dict:
    if code == 0:
        return json.loads((out_dir / "train_record.json").read_text())
    error = out_dir / ERROR_FILE
    if error.exists():
        _raise_recorded(json.loads(error.read_text()))
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL:])
    raise DistributedLaunchError(f"accelerate launch exited with {code}; full log {log}; last lines:\n{tail}")


def _raise_recorded(error: dict) -> None:
    from components.training import recipe as train
    from components.training.data import DataError

    kind, message = error["type"], error["message"]
    if kind == "GenerationCheckError":
        raise train.GenerationCheckError(error["result"])
    known = {"TrainingDivergedError": train.TrainingDivergedError, "DataError": DataError, "ValueError": ValueError}
    raise known.get(kind, DistributedLaunchError)(message if kind in known else f"{kind}: {message}")


# --- the child processes: launcher and rank ----------------------------------------------------------


def die_with_parent(sig: signal.Signals) -> None:
    """Linux: receive `sig` when the parent exits (PR_SET_PDEATHSIG = 1); exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(128 + int(sig))


def launcher_main(args: list[str]) -> None:
    """accelerate launch, in this process, with a SIGTERM when the parent dies (torchrun then stops the ranks)."""
    die_with_parent(signal.SIGTERM)
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(args))


def rank_main(job_file: str) -> NoReturn:
    """One rank: join the process group, load the spec's model and data, run the training loop.

    The rank ends with os._exit, after its files are written and the process group is destroyed: a sharded model
    keeps the gloo group alive (its device mesh holds it), and freeing it while the interpreter finalizes can
    abort the process (SIGABRT, seen once in CI on an FSDP2 rank that had finished: gloo's worker threads hold
    tensors whose release needs the GIL, torch PR 179291). What the rank wrote is fsynced; nothing else is lost."""
    die_with_parent(signal.SIGKILL)
    from accelerate import PartialState

    from components.training import sharding

    state = PartialState(cpu=not torch.cuda.is_available())
    job = json.loads(Path(job_file).read_text())
    out_dir = Path(job["out_dir"])
    code = 0
    try:
        accelerator = sharding.accelerator_from_launch()  # FSDP from the accelerate config; None: DDP
        _train_rank(job, out_dir, state, accelerator)
    except BaseException as exc:  # noqa: BLE001 - recorded, printed, and the exit code says it failed
        if state.is_main_process:
            _record_error(exc, out_dir)
        traceback.print_exc()
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        try:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _train_rank(job: dict, out_dir: Path, state, accelerator) -> None:
    from components.models.load import load_model, load_tokenizer, resolve_model
    from components.spec import TaskSpec
    from components.training.recipe import prepare_data, train

    spec = TaskSpec.model_validate(job["spec"])
    device = f"cuda:{state.local_process_index}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(device)
    with state.main_process_first():  # a first load converts and caches; the others read the cache
        resolved = resolve_model(spec.base_model)
        tokenizer = load_tokenizer(spec.base_model, resolved)
        model = load_model(spec.base_model, resolved, device=device, precision=spec.behavior.training.precision)
    data = prepare_data(spec.behavior, tokenizer)

    def load_base():  # rank 0 checks generation on a fresh base plus the saved adapter (FSDP)
        return load_model(spec.base_model, resolved, device=device, precision=spec.behavior.training.precision)

    train(model, tokenizer, spec.behavior, out_dir, data=data, progress=_print_progress if state.is_main_process else None,
          accelerator=accelerator, load_base=load_base)


def _print_progress(step: int, total: int, metrics: dict) -> None:
    print(PROGRESS + json.dumps({"step": step, "total": total, "metrics": metrics}), flush=True)


def _record_error(exc: BaseException, out_dir: Path) -> None:
    error = {"type": type(exc).__name__, "message": str(exc), "result": getattr(exc, "result", None)}
    atomic_write_json(out_dir / ERROR_FILE, error, indent=1, default=str)


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "launch":
        launcher_main(rest)
    elif role == "rank":
        rank_main(*rest)
    else:
        raise SystemExit(f"usage: python -m components.training.distributed launch ACCELERATE_ARGS... | rank JOB.json (not {role!r})")
