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
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

from flows.pool_runs import POOL_TYPE


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


