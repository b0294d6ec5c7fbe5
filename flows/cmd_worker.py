"""`adaptflow worker --pool NAME`: run flow runs from a Prefect work pool (flows/pools.py).

It needs a Prefect API that the submitting commands reach too: $PREFECT_API_URL (a shared server), else
the local server `adaptflow ui` leaves running, else it starts that local server (it stays up, as
`adaptflow ui`'s does; `adaptflow ui --stop` stops it).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flows import console
from flows.options import RootOpt, VerboseOpt
from flows.server import DEFAULT_PORT

DEFAULT_POOL = "adaptflow"


def worker(
    pool: str = typer.Option(DEFAULT_POOL, "--pool", help="work pool to poll; created (type process) if missing"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="most flow runs this worker runs at once"),
    name: str | None = typer.Option(None, "--name", help="worker name shown in the UI (default: Prefect's)"),
    port: int = typer.Option(DEFAULT_PORT, help="local Prefect server port when $PREFECT_API_URL is unset"),
    root: Path | None = RootOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Apply the deployments to a Prefect work pool and run its flow runs until Ctrl-C."""
    from flows import pools, server

    log = console.setup("worker", verbose)
    if root is not None:  # flow runs inherit it: the registry they write unless the run names another
        os.environ["ADAPTFLOW_REGISTRY"] = str(root.expanduser().absolute())
    url = server.running_url()
    if url is None:
        proc = server.start_server(port, log=log.with_suffix(".server.log"))
        server.remember(proc, port)
        url = server.api_url(port)
        typer.echo(f"Prefect UI: http://127.0.0.1:{port} (started; it stays up, `adaptflow ui --stop` stops it)")
    os.environ["PREFECT_API_URL"] = url  # this process, the worker and its flow runs
    console.after_prefect_import()
    try:
        code = pools.serve_pool(pool, typer.echo, limit, name)
    except KeyboardInterrupt:
        code = 0
    typer.echo(f"stopped the worker on pool {pool!r}; the Prefect server at {url} is still up")
    raise typer.Exit(code)
