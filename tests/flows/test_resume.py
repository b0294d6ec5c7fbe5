"""Killing `adaptflow run` during training and running it again resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_killed_run_resumes_from_its_last_checkpoint(prefect_api, isolated, make_workspace):
    from prefect.settings import PREFECT_API_URL

    spec = make_workspace(goal="behavior", max_steps=40, checkpoint_every=4)
    env = dict(os.environ) | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "run", str(spec)]
    log = open(isolated / "first.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(cmd, cwd=isolated, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(isolated.glob("stages/train/*.work/checkpoints/step-*/complete.json")):
        assert first.poll() is None, (isolated / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not list(isolated.glob("stages/train/*/stage.json")), "training finished before the kill; raise max_steps"

    second = subprocess.run(cmd, cwd=isolated, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "registered tiny-behavior@v1" in second.stdout
    [record_file] = isolated.glob("stages/train/*/train_record.json")
    record = json.loads(record_file.read_text())
    assert record["resumed_from_step"] and record["resumed_from_step"] >= 4
    assert record["steps"] == 40
