"""`adaptflow run SPEC --pool NAME`: the run goes to the pool's `adapt` deployment; this command follows it.

The flow run works in the submitting workspace (the process job's `working_dir`) and registers into
this command's registry (its `ADAPTFLOW_REGISTRY` goes in the job's env): on one machine that is the
same folder; across machines, a shared root (s3://..., docs/scale.md). Exit codes are `adaptflow run`'s:
0 registered with its gates passed (or up to date), 3 a gate failed, 1 the flow run failed or crashed,
130 Ctrl-C (the flow run is cancelled first, and the command says so).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import typer

from flows import console


def run_on_pool(pool: str, spec, spec_file: Path, workspace: Path | None, registry, verdict: Callable) -> int:
    from prefect.client.orchestration import get_client

    from flows import keys
    from flows import pool_runs as pools
    from flows.server import running_url

    url = running_url()
    if url is None:
        raise pools.PoolError("--pool needs the Prefect server the pool's workers use: set PREFECT_API_URL, or "
                              "start `adaptflow ui` / `adaptflow worker --pool NAME` on this machine first")
    os.environ["PREFECT_API_URL"] = url
    console.after_prefect_import()
    with get_client(sync_client=True) as client:
        pools.check_pool(client, pool, pools.ADAPT_DEPLOYMENT)
    where = (workspace or Path.cwd()).expanduser().absolute()
    run = pools.submit(pools.ADAPT_DEPLOYMENT, {"spec_path": str(spec_file.expanduser().absolute())},
                       pools.job_variables(pool, {"ADAPTFLOW_REGISTRY": str(registry.root)}, where))
    typer.echo(f"submitted flow run {run.name} ({run.id}) to pool {pool!r}; following it (Ctrl-C cancels it)", err=True)
    try:
        state = pools.follow(run.id, lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        pools.cancel(run.id, "Ctrl-C in `adaptflow run --pool`")
        final = pools.wait_final(run.id)
        typer.echo(f"\nstopped (Ctrl-C): cancelled flow run {run.name} ({run.id}) on pool {pool!r}; "
                   f"it is {final.name if final else 'Cancelling'}; finished stages are kept, "
                   f"`adaptflow run {spec_file} --pool {pool}` resumes from there", err=True)
        return console.EXIT_INTERRUPTED
    if not state.is_completed():
        typer.echo(f"error: flow run {run.name} ended {state.name}: {state.message or 'no message'} "
                   f"(its logs are above and in the Prefect UI)", err=True)
        return 1
    found = keys.up_to_date(spec, registry)  # what the run registered, found by its stage keys
    if found is None:
        typer.echo(f"flow run {run.name} completed", err=True)
        return console.EXIT_OK
    typer.echo(f"registered {found.ref} (flow run {run.name} on pool {pool!r})")
    return verdict(found)
