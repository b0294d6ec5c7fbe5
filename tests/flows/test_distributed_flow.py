"""`adaptflow run --processes 2`: the train stage launches accelerate as a subprocess and follows it; Ctrl-C
stops every rank; the rerun resumes from the last checkpoint and registers the system."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _role(proc: psutil.Process) -> str:
    """`launch` or `rank`: python [-u] -m components.training.distributed ROLE ..."""
    args = proc.cmdline()
    return args[args.index("components.training.distributed") + 1]


def _trainers(pid: int) -> list[psutil.Process]:
    """The accelerate launcher and the ranks under the CLI process."""
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if "components.training.distributed" in p.cmdline()]
    except psutil.NoSuchProcess:
        return []


def test_ctrl_c_stops_every_rank_and_the_rerun_resumes_on_two_processes(prefect_api, isolated, make_workspace):
    from prefect.settings import PREFECT_API_URL

    spec = make_workspace(goal="behavior", max_steps=60, checkpoint_every=2)
    env = dict(os.environ) | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1",
                              "CUDA_VISIBLE_DEVICES": ""}  # 2 CPU processes (gloo) on a GPU machine too
    cmd = [sys.executable, "-m", "flows.cli", "run", str(spec), "--processes", "2"]
    log = open(isolated / "first.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(cmd, cwd=isolated, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, seen = time.monotonic() + 300, []
    while not list(isolated.glob("stages/train/*.work/checkpoints/step-*/complete.json")):
        assert first.poll() is None, (isolated / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        seen = _trainers(first.pid) or seen
        time.sleep(0.2)
    seen = _trainers(first.pid) or seen
    ranks = [p for p in seen if _role(p) == "rank"]
    assert len(ranks) == 2 and len(seen) == 3, [p.cmdline() for p in seen]  # the launcher and two ranks
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: SIGINT to the foreground group
    assert first.wait(timeout=120) == 130, (isolated / "first.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(seen, timeout=30)
    assert not alive, f"outlived Ctrl-C: {[p.cmdline() for p in alive]}"
    text = (isolated / "first.log").read_text()
    assert "stopped (Ctrl-C): training checkpoint step-" in text, text[-2000:]
    assert not list(isolated.glob("stages/train/*/stage.json")), "training finished before Ctrl-C; raise max_steps"

    second = subprocess.run(cmd, cwd=isolated, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "registered tiny-behavior@v1" in second.stdout
    [record_file] = isolated.glob("stages/train/*/train_record.json")
    record = json.loads(record_file.read_text())
    assert record["processes"] == 2 and record["steps"] == 60
    assert record["resumed_from_step"] and record["resumed_from_step"] >= 2
    assert "training on 2 processes: accelerate launch" in second.stdout + second.stderr


def test_processes_that_do_not_split_the_batch_fail_before_prefect_starts(isolated, make_workspace):
    spec = make_workspace(goal="behavior")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec), "--processes", "3"], cwd=isolated,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert ("--processes 3: training.batch_size (4) does not split over training.distributed.processes (3)"
            in done.stderr), done.stderr
