"""Training on 2 processes through `accelerate launch` (gloo, CPU) against the one-process loop.

The adapter from 2 processes equals the one from 1 process with the same global batch within 1e-5 (fp32):
the ranks split every micro-batch, divide the loss by the step's answer tokens summed over both ranks and
sum the gradients, so the only difference left is floating-point summation order (smaller per-rank batches), which
Adam enlarges for near-zero gradient elements in proportion to the learning rate (bench/ddp.py: 2.2e-8 at lr 2e-4,
2.4e-6 at lr 1e-2); lr 1e-3 here. LoRA dropout is 0: dropout masks are drawn per rank and cannot match one process's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from components.models.load import load_model, load_tokenizer, resolve_model
from components.spec import TaskSpec
from components.training import checkpoint, distributed
from components.training.recipe import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOLERANCE = 1e-5  # fp32 (the goal)
REPO = Path(__file__).resolve().parents[3]
CPU = {"CUDA_VISIBLE_DEVICES": ""}  # 2 CPU processes (gloo) on a GPU machine too


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """9 rows of different lengths: the last micro-batch of 4 has one row, so rank 1's share is empty, and the
    ranks' answer-token counts differ (the loss must be divided by the count over both)."""
    path = tmp_path_factory.mktemp("ddp-data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {n} even?" + " really" * (n % 4)},
                          {"role": "assistant", "content": ("yes" if n % 2 == 0 else "no, it is odd") * (1 + n % 3)}]}
            for n in range(9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task(model_dir: Path, data_file: Path, processes: int | None, **training) -> TaskSpec:
    dist = {"distributed": {"processes": processes}} if processes else {}
    return TaskSpec.model_validate({
        "name": "tiny-ddp", "goal": "behavior",
        "base_model": {"id": str(model_dir), "allow_outside_workspace": True},
        "behavior": {
            "data": {"train": str(data_file), "eval": str(data_file)},
            "adapter": {"method": "lora", "r": 4, "dropout": 0.0},
            "training": {"max_steps": 6, "batch_size": 4, "grad_accum": 2, "lr": 1.0e-3, "checkpoint_every": 2,
                         "eval_every": 3, "seed": 3, "precision": "fp32", **dist, **training},
        },
    })


def one_process(spec: TaskSpec, out: Path):
    resolved = resolve_model(spec.base_model)
    tokenizer = load_tokenizer(spec.base_model, resolved)
    model = load_model(spec.base_model, resolved, device="cpu", precision="fp32")
    return train(model, tokenizer, spec.behavior, out)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("packing", [False, True])
def test_two_processes_train_the_adapter_one_process_trains(tmp_path, tiny_llama_dir, data_file, packing):
    single = one_process(task(tiny_llama_dir, data_file, None, packing=packing), tmp_path / "one")
    seen = []
    record = distributed.launch(task(tiny_llama_dir, data_file, 2, packing=packing), tmp_path / "two", env=CPU,
                                progress=lambda step, total, metrics: seen.append(step))
    assert record["processes"] == 2 and single.processes == 1
    diff = max_diff(adapter(tmp_path / "one"), adapter(tmp_path / "two"))
    assert diff <= TOLERANCE, diff
    assert seen == [1, 2, 3, 4, 5, 6]  # rank 0's progress, relayed once
    assert record["train_tokens"] == single.train_tokens  # both ranks' tokens, counted once
    steps = zip(single.loss_curve, record["loss_curve"], strict=True)
    assert max(abs(a[1] - b[1]) for a, b in steps) < 1e-5  # the step's loss over both ranks, as one process
    assert record["generation"]["passed"] is True
    # rank 0 alone wrote: one record, one adapter, complete checkpoints only, no error file
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path / "two" / "checkpoints")] == [
        "step-000004", "step-000006"]
    assert not (tmp_path / "two" / distributed.ERROR_FILE).exists()


def test_batch_that_does_not_split_over_the_processes_is_refused(tiny_llama_dir, data_file):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        task(tiny_llama_dir, data_file, 3)
    message = str(err.value)
    assert "training.batch_size (4) does not split over training.distributed.processes (3)" in message
    assert "set batch_size to a multiple of 3 (e.g. 6) or processes to one of 1, 2, 4" in message


def _role(proc: psutil.Process) -> str | None:
    """`launch` or `rank`: python [-u] -m components.training.distributed ROLE ..."""
    args = proc.cmdline()
    return args[args.index("components.training.distributed") + 1] if "components.training.distributed" in args else None


def _ranks_of(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if _role(p) == "rank"]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_killed_launcher_leaves_no_rank_and_the_rerun_resumes(tmp_path, tiny_llama_dir, data_file):
    """SIGKILL to the launcher's process group mid-run: no rank survives (they die with their parent); a rerun
    resumes from the last complete checkpoint and ends with the uninterrupted run's adapter."""
    spec = task(tiny_llama_dir, data_file, 2, max_steps=40, checkpoint_every=4)
    out = tmp_path / "killed"
    out.mkdir()
    job = out / "ddp-job.json"
    job.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "out_dir": str(out)}))
    cmd = [sys.executable, "-m", "components.training.distributed", "launch",
           *distributed.launch_args(spec.behavior.training.distributed, job)]
    log = (out / "launch.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=distributed._env(CPU), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline, ranks = time.monotonic() + 120, []
    while not checkpoint.complete_checkpoints(out / "checkpoints"):
        assert proc.poll() is None, (out / "launch.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        ranks = _ranks_of(proc.pid) or ranks
        time.sleep(0.1)
    ranks = _ranks_of(proc.pid) or ranks
    assert len(ranks) == 2, [r.cmdline() for r in ranks]
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher's group; the ranks run in sessions of their own
    proc.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, f"ranks outlived the launcher: {[p.pid for p in alive]}"
    assert not (out / "adapter").exists(), "training finished before the kill; raise max_steps"

    record = distributed.launch(spec, out, env=CPU)
    assert record["resumed_from_step"] and record["resumed_from_step"] >= 4 and record["steps"] == 40
    one_process(task(tiny_llama_dir, data_file, None, max_steps=40, checkpoint_every=4), tmp_path / "one")
    assert max_diff(adapter(tmp_path / "one"), adapter(out)) <= TOLERANCE
