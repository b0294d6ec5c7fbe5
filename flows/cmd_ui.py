"""`adaptflow ui`: a local Prefect server plus the adapt / evaluate / query deployments."""

from __future__ import annotations

import os

import typer

from flows.cli import app


@app.command()
def ui(port: int = typer.Option(4200, help="Prefect server port on 127.0.0.1")) -> None:
    """Start (or reuse) a local Prefect server and serve the deployments until Ctrl-C."""
    from flows.server import api_url, start_server

    started = start_server(port)
    os.environ["PREFECT_API_URL"] = api_url(port)
    typer.echo(f"Prefect UI: http://127.0.0.1:{port}  ({'started' if started else 'already running'})")
    from prefect import serve

    from flows.deployments import all_deployments

    serve(*all_deployments())
