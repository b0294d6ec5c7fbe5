"""Flow runs on a work pool from the submitting side: job variables, submit, follow the logs, cancel.

Used by `adaptflow run --pool` (flows/run_pool.py) and `adaptflow compare --pool` (flows/compare_pool.py); the
worker side (pool, deployments, `prefect worker`) is flows/pools.py.
"""

from __future__ import annotations

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
