"""`adaptflow ui`: a local Prefect server plus the adapt / evaluate / query / compare deployments.

The server outlives the command on purpose: runs started from the CLI afterwards reuse it (they
show in the UI and an unchanged re-run is recorded in about a second). `adaptflow ui --stop`
stops it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flows import console
from flows.options import RootOpt, VerboseOpt
from flows.server import DEFAULT_PORT


def ui(
    port: int = typer.Option(DEFAULT_PORT, help="Prefect server port on 127.0.0.1 ($ADAPTFLOW_PREFECT_PORT, else 4200)"),
    stop: bool = typer.Option(False, "--stop", help="stop the Prefect server an earlier `adaptflow ui` left running"),
    root: Path | None = RootOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Start (or reuse) a local Prefect server and serve the deployments until Ctrl-C; the server stays up."""
    from flows import server

    if stop:
        typer.echo(server.stop_kept_server(port))
        return
    log = console.setup("ui", verbose)
    if root is not None:  # the deployments (and the query form's dropdown) read the registry from here
        os.environ["ADAPTFLOW_REGISTRY"] = str(root.expanduser().absolute())
    proc = server.start_server(port, log=log.with_suffix(".server.log"))
    server.remember(proc, port)
    os.environ["PREFECT_API_URL"] = server.api_url(port)
    typer.echo(f"Prefect UI: http://127.0.0.1:{port}  ({'started' if proc else 'already running'}; "
               "it stays up after Ctrl-C so CLI runs show here too; `adaptflow ui --stop` stops it)")
    from prefect import serve

    from flows.deployments import all_deployments
    from flows.record import record_noted

    console.after_prefect_import()
    if recorded := record_noted(server.api_url(port)):
        typer.echo(f"recorded {recorded} unchanged run(s) noted while no server was up")
    try:
        serve(*all_deployments())
    except KeyboardInterrupt:
        pass
    typer.echo(f"stopped serving the deployments; the Prefect server is still running at http://127.0.0.1:{port} "
               "(`adaptflow ui --stop` stops it)")
