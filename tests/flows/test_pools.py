"""Flow runs on a Prefect work pool: a real server, a real `adaptflow worker` (a `prefect worker` process),
`adaptflow run --pool` submitting and following, and Ctrl-C cancelling the flow run on the worker.

The server is the temporary API of flows/server.py (its own session, stopped in `finally`); the worker
runs in its own session too and is stopped, with every flow-run process it started, in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows import server

REPO = Path(__file__).resolve().parents[2]
POOL = "test-pool"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


@pytest.fixture
def pool_env(tmp_path):
    """A Prefect API and one `adaptflow worker --pool test-pool` on it; env for commands that use them."""
    proc, port = server.temporary_server(tmp_path / "server.log")
    worker = None
    try:
        env = {**os.environ, "PREFECT_API_URL": server.api_url(port), "PYTHONPATH": str(REPO),
               "ADAPTFLOW_REGISTRY": str(tmp_path / "registry"), "ADAPTFLOW_STAGES": str(tmp_path / "stages"),
               "ADAPTFLOW_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        worker = subprocess.Popen([sys.executable, "-m", "flows.cli", "worker", "--pool", POOL, "--name", "w1"],
                                  cwd=tmp_path, env=env, stdout=open(tmp_path / "worker.log", "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_worker(env["PREFECT_API_URL"], worker, tmp_path / "worker.log")
        yield env
    finally:
        if worker is not None:
            _stop_group(worker)
        server.stop_process(proc)


def _wait_for_worker(url: str, worker: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(Exception):
                if client.read_workers_for_work_pool(POOL) and client.read_deployment_by_name("adapt/adapt").work_pool_name == POOL:
                    return
            time.sleep(1)
    raise AssertionError(f"no worker online within {timeout} s: {log.read_text()[-3000:]}")


def _flow_run(url: str, run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _run_id(err: str) -> str:
    line = next(line for line in err.splitlines() if line.startswith("submitted flow run"))
    return line.split("(")[1].split(")")[0]


def test_run_on_pool_is_done_by_the_worker_and_registers(pool_env, tmp_path, workspace_writer, tiny_llama_dir,
                                                        tiny_embedder_dir):
    spec = workspace_writer(tmp_path / "ws", tiny_llama_dir, tiny_embedder_dir, goal="knowledge")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec), "--workspace", str(tmp_path / "ws"),
                           "--pool", POOL], cwd=tmp_path / "ws", env=pool_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered tiny-knowledge@v1" in done.stdout
    run = _flow_run(pool_env["PREFECT_API_URL"], _run_id(done.stderr))
    assert run.state.is_completed() and run.work_pool_name == POOL and run.deployment_id is not None
    assert (tmp_path / "registry" / "tiny-knowledge" / "v1" / "manifest.json").is_file()
    assert "| " in done.stderr  # the flow run's logs, followed from the API


def test_ctrl_c_cancels_the_flow_run_on_the_worker(pool_env, tmp_path, workspace_writer, tiny_llama_dir,
                                                   tiny_embedder_dir):
    spec = workspace_writer(tmp_path / "ws", tiny_llama_dir, tiny_embedder_dir, goal="behavior", max_steps=5000,
                            checkpoint_every=2)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(spec), "--workspace", str(tmp_path / "ws"),
                             "--pool", POOL], cwd=tmp_path / "ws", env=pool_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("stages/train/*.work/checkpoints/step-*/complete.json")):  # training, on the worker
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _stop_group(proc)
    assert proc.returncode == 130, err[-3000:]
    assert "stopped (Ctrl-C): cancelled flow run" in err and f"on pool '{POOL}'" in err
    run_id = _run_id(err)
    deadline = time.monotonic() + 60
    while not (run := _flow_run(pool_env["PREFECT_API_URL"], run_id)).state.is_cancelled():
        assert time.monotonic() < deadline, f"flow run is {run.state.name}, not Cancelled"
        time.sleep(1)
    engines = [p for p in psutil.process_iter(["cmdline"]) if "prefect.engine" in " ".join(p.info["cmdline"] or [])
               and str(tmp_path) in " ".join(p.environ().get(k, "") for k in ("ADAPTFLOW_STAGES",))]
    assert not engines, "the flow run's process outlived its cancellation"
