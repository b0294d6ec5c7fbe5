"""Flow runs on a Prefect work pool: the deployments applied to a pool, workers that run them, runs submitted and followed.

`adaptflow worker --pool NAME` (and `adaptflow ui --pool NAME`) creates the pool if it is missing (type
`process`, with Prefect's default base job template), applies the same deployments `adaptflow ui` serves
to it (`prefect.deploy`; their entrypoints are module paths, so a process worker imports them from the
installed package and needs no image or storage), then runs `prefect worker start --pool NAME` in the
foreground. Each flow run is a child process of a worker; any number of workers, on any machines that
reach the API and import this package, poll the same pool.

`adaptflow run --pool NAME` does not run the flow: it creates a flow run of the pool's `adapt/adapt`
deployment (`run_deployment`, timeout 0), prints its logs as they arrive, and exits with the code the
flow run's final state gives. Ctrl-C cancels the flow run (state Cancelling: the worker kills it).
On a Docker or Kubernetes pool the same deployments run unchanged; docs/scale.md has the job templates.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

POOL_TYPE = "process"
ADAPT_DEPLOYMENT = "adapt/adapt"
POLL_SECONDS = 1.0


class PoolError(RuntimeError):
    """A pool command that cannot go on (no reachable API, no deployment on the pool); says what to do."""


def ensure_pool(name: str) -> bool:
    """Create the work pool `name` (type process, Prefect's default job template) unless it exists; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False  # a pool made elsewhere (docker, kubernetes) is used as it is
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            with contextlib.suppress(ObjectAlreadyExists):  # another worker created it first
                client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template))
                return True
            return False


def deploy_to_pool(name: str) -> list[UUID]:
    """Apply every deployment `adaptflow ui` serves to the pool (the same names: adapt/adapt, compare/compare, ...),
    and `variant-stages`, which `adaptflow compare --pool` sends each variant's stages to."""
    from prefect import deploy

    from flows import compare_pool
    from flows.deployments import all_deployments

    return deploy(*all_deployments(), compare_pool.deployment(), work_pool_name=name, print_next_steps_message=False,
                  ignore_warnings=True)


def worker_command(pool: str, limit: int | None = None, name: str | None = None) -> list[str]:
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect), "worker", "start", "--pool", pool]  # the worker type follows the pool's
    if limit:
        cmd += ["--limit", str(limit)]
    if name:
        cmd += ["--name", name]
    return cmd


def run_worker(pool: str, limit: int | None = None, name: str | None = None) -> int:
    """`prefect worker start` in the foreground (Ctrl-C reaches it too: same process group); its exit code."""
    proc = subprocess.Popen(worker_command(pool, limit, name), env=dict(os.environ))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)  # the worker got the same SIGINT: let it mark its runs and exit
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def serve_pool(pool: str, echo: Callable[[str], None], limit: int | None = None, name: str | None = None) -> int:
    """Create the pool if missing, apply the deployments to it, then work it in the foreground."""
    created = ensure_pool(pool)
    deploy_to_pool(pool)
    echo(f"work pool {pool!r} ({'created, ' if created else ''}type {POOL_TYPE}): deployments adapt, evaluate, "
         f"query, compare, inspect, compose applied; a worker polls it until Ctrl-C")
    return run_worker(pool, limit, name)


def job_variables(pool: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """What a run overrides in the pool's job template: env always; working_dir on a process pool only (a
    Docker or Kubernetes job runs in its image's folder, and its template has no such variable)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        kind = client.read_work_pool(pool).type
    return {"env": env, "working_dir": str(cwd)} if kind == POOL_TYPE else {"env": env}


def submit(deployment: str, parameters: dict[str, Any], job_variables: dict[str, Any]):
    """A flow run of `deployment` on its pool, scheduled now; returned at once (timeout 0)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        return run_deployment(deployment, parameters=parameters, job_variables=job_variables, timeout=0)
    except ObjectNotFound:
        raise PoolError(f"there is no deployment {deployment!r} on this Prefect server; start a worker with "
                        "`adaptflow worker --pool NAME` (it applies the deployments to the pool)") from None


def check_pool(client, pool: str, deployment: str) -> None:
    """The deployment must be on `pool`, and the pool should have a worker (else the run waits: say so)."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        found = None
    if found is None or found.work_pool_name != pool:
        where = f"on pool {found.work_pool_name!r}" if found is not None and found.work_pool_name else "served in-process"
        raise PoolError(f"deployment {deployment!r} is {where if found else 'missing'}, not on pool {pool!r}; "
                        f"start a worker with `adaptflow worker --pool {pool}` first")
    online = client.read_workers_for_work_pool(pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
    if not online:
        print(f"no worker is online on pool {pool!r} yet: the run waits until `adaptflow worker --pool {pool}` "
              "starts", file=sys.stderr)


def follow(flow_run_id: UUID, echo: Callable[[str], None], poll: float = POLL_SECONDS):
    """Print the flow run's logs as they arrive until its state is final; return that state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    seen: set[UUID] = set()
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(seen))
            for log in logs:
                if log.id not in seen:
                    seen.add(log.id)
                    echo(f"{log.timestamp:%H:%M:%S} | {log.message}")
            if run.state is not None and run.state.is_final() and len(logs) < 200:
                return run.state
            time.sleep(poll)


def cancel(flow_run_id: UUID, reason: str) -> None:
    """Ask the pool's worker to stop the flow run (what `prefect flow-run cancel` does)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message=reason), force=True)


def wait_final(flow_run_id: UUID, timeout: float = 30.0):
    """The flow run's state once final (after a cancel: Cancelled), or the last seen after `timeout` s."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if (state is not None and state.is_final()) or time.monotonic() > deadline:
                return state
            time.sleep(0.5)
