"""Stopping `adaptflow run` with real signals during training, against the real temporary Prefect server.

Ctrl-C in a terminal reaches the whole foreground process group; `timeout` and `kill` send SIGTERM
to the command alone. Either way: one line, the right exit code within seconds, the flow runs
marked Crashed in Prefect's database, and no process (the server included) left behind.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start_and_wait_for_checkpoint(root, spec):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # no server up: a temporary one
    env |= {"PREFECT_HOME": str(root / "prefect-home"), "ADAPTFLOW_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(spec)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(root.glob("stages/train/*.work/checkpoints/step-*/complete.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "the run did not start its own server"
    return proc, children


def _flow_run_states(root) -> dict[str, str]:
    with sqlite3.connect(root / "prefect-home" / "prefect.db") as db:
        return dict(db.execute("select name, state_type from flow_run"))


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_one_signal_stops_the_run_marks_it_crashed_and_leaves_no_process(isolated, make_workspace, sig, code, word):
    spec = make_workspace(goal="behavior", max_steps=2000, checkpoint_every=2)
    proc, children = _start_and_wait_for_checkpoint(isolated, spec)
    sent = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C: the whole foreground group
    else:
        proc.send_signal(sig)  # `timeout` / `kill`: the command alone
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent

    assert proc.returncode == code, err[-3000:]
    # ~4 s measured at a normal load; the bound is the 10 s, stretched when the machine runs more
    # processes than it has cores (the full suite on 2 shared cores reached a load of 19: 11-13 s)
    limit = min(30.0, 10.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)))
    assert took < limit, f"took {took:.1f} s to stop (limit {limit:.0f} s at load {os.getloadavg()[0]:.1f})"
    stopped = [line for line in err.splitlines() if f"stopped ({word})" in line]
    assert len(stopped) == 1 and "adaptflow run" in stopped[0] and "checkpoint step-" in stopped[0], err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    assert "Warning" not in err and "Loading weights" not in err  # e.g. is_gradient_checkpointing's FutureWarning
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], "a process outlived the run"
    states = _flow_run_states(isolated)
    assert len(states) == 2 and set(states.values()) == {"CRASHED"}, states  # adapt and its behavior subflow


def _start_ui(tmp_path, env, port, name):
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed by the caller's communicate()
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_serving(tmp_path, proc, port, name):
    from flows.server import api_url

    deadline = time.monotonic() + 180
    while "Your deployments are being served" not in (tmp_path / f"{name}.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-3000:]
        time.sleep(0.5)
    assert api_url(port)


def test_ui_says_it_leaves_the_server_running_and_ui_stop_stops_it(tmp_path):
    from flows.server import free_port, healthy

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "ADAPTFLOW_HOME": str(tmp_path / "home"),
            "ADAPTFLOW_REGISTRY": str(tmp_path / "registry"), "PYTHONUNBUFFERED": "1"}
    first = _start_ui(tmp_path, env, port, "first")
    second = None
    try:
        _wait_serving(tmp_path, first, port, "first")
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in its terminal
        first.wait(timeout=60)
        out = (tmp_path / "first.log").read_text()
        assert "stays up after Ctrl-C" in out and "still running" in out and "`adaptflow ui --stop`" in out, out[-3000:]
        assert healthy(port), "the server should outlive `adaptflow ui`, as it said"

        second = _start_ui(tmp_path, env, port, "second")  # reuses the running server
        _wait_serving(tmp_path, second, port, "second")
        assert "already running" in (tmp_path / "second.log").read_text()
        stop = subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--stop", "--port", str(port)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0 and f"stopped the Prefect server on port {port}" in stop.stdout, stop.stdout + stop.stderr
        assert second.wait(timeout=30) is not None  # the serving process stopped too
        assert not healthy(port)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if healthy(port):  # a failed assertion above must not leave the server it started behind
            subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--stop", "--port", str(port)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    again = subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--stop", "--port", str(port)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert f"no Prefect server is running on port {port}" in again.stdout
