"""`adaptflow run SPEC`: the main flow from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from components.specload import SpecError, load_spec
from flows.cli import app


@app.command()
def run(
    spec: Path = typer.Argument(..., help="spec file"),
    workspace: Path | None = typer.Option(None, "--workspace", help="root that spec paths must stay inside"),
) -> None:
    """Train, index, evaluate and register the system a spec declares; prints NAME@vN."""
    try:
        load_spec(spec, workspace)  # fail fast, before Prefect starts
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    from flows.pipeline import adapt

    ref = adapt(str(spec), str(workspace) if workspace else None)
    typer.echo(f"registered {ref}")
