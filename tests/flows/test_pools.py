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


@pytest.fixture(scope="module")
def pool_env(tmp_path_factory):
    """A Prefect API (its own database) and one `adaptflow worker --pool test-pool` on it, shared by this module's
    tests (a fresh database's migrations cost minutes on a loaded machine); env for the commands that use them."""
    root = tmp_path_factory.mktemp("pool")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(root / "prefect-home"))
        proc, port = server.temporary_server(root / "server.log")
    worker = None
    try:
        env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": server.api_url(port),
               "PYTHONPATH": str(REPO), "ADAPTFLOW_REGISTRY": str(root / "registry"),
               "ADAPTFLOW_STAGES": str(root / "stages"), "ADAPTFLOW_HOME": str(root / "home"),
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        worker = subprocess.Popen([sys.executable, "-m", "flows.cli", "worker", "--pool", POOL, "--name", "w1"],
                                  cwd=root, env=env, stdout=open(root / "worker.log", "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_worker(env["PREFECT_API_URL"], worker, root / "worker.log")
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


def _deployment_runs(url: str, deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])))


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
    assert (Path(pool_env["ADAPTFLOW_REGISTRY"]) / "tiny-knowledge" / "v1" / "manifest.json").is_file()
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
        stages = Path(pool_env["ADAPTFLOW_STAGES"])
        while not list(stages.glob("train/*.work/checkpoints/step-*/complete.json")):  # training, on the worker
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
               and p.environ().get("ADAPTFLOW_STAGES") == pool_env["ADAPTFLOW_STAGES"]]
    assert not engines, "the flow run's process outlived its cancellation"


def _table(registry: Path, name: str) -> list[tuple]:
    import json

    report = json.loads((registry / f"{name}--compare" / "v1" / "report.json").read_text())
    return sorted((r["variant"], r.get("error"), json.dumps(r.get("scores"), sort_keys=True), r.get("trainable_params"))
                  for r in report["rows"])


def test_compare_on_pool_gives_the_sequential_table(pool_env, tmp_path, workspace_writer, tiny_llama_dir,
                                                    tiny_embedder_dir):
    spec = workspace_writer(tmp_path / "ws", tiny_llama_dir, tiny_embedder_dir, goal="behavior", max_steps=2)
    cmd = [sys.executable, "-m", "flows.cli", "compare", str(spec), "--methods", "lora,ia3", "--workspace",
           str(tmp_path / "ws")]
    pooled = subprocess.run(cmd + ["--parallel", "2", "--pool", POOL], cwd=tmp_path / "ws", env=pool_env,
                            capture_output=True, text=True, timeout=600)
    assert pooled.returncode == 0, pooled.stderr[-3000:] + pooled.stdout[-3000:]
    runs = _deployment_runs(pool_env["PREFECT_API_URL"], "variant-stages/variant-stages")
    assert sorted(r.name for r in runs) == ["tiny-behavior--ia3", "tiny-behavior--lora"]  # both went to the worker
    assert all(r.state.is_completed() and r.work_pool_name == POOL for r in runs)
    local = {**pool_env, "ADAPTFLOW_STAGES": str(tmp_path / "stages-seq"), "ADAPTFLOW_REGISTRY": str(tmp_path / "reg-seq")}
    sequential = subprocess.run(cmd + ["--parallel", "1"], cwd=tmp_path / "ws", env=local, capture_output=True,
                                text=True, timeout=600)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    assert len(_deployment_runs(pool_env["PREFECT_API_URL"], "variant-stages/variant-stages")) == 2  # none more
    pooled_table = _table(Path(pool_env["ADAPTFLOW_REGISTRY"]), "tiny-behavior")
    assert pooled_table == _table(tmp_path / "reg-seq", "tiny-behavior")
    assert [row[0] for row in pooled_table] == ["ia3", "lora"] and not any(row[1] for row in pooled_table)
