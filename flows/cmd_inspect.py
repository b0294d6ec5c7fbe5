"""`adaptflow inspect NAME@REF`: where a registered adapter's change lives (components.methods.inspect).

The command reads the adapter's files directly (no Prefect server, no base model for factorised
methods); the `inspect` deployment does the same from the Prefect UI and shows the summary and
heatmap as a markdown artifact.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import typer
from prefect import flow

from flows import console
from flows.options import RootOpt


def run_inspection(ref: str, root: Path | None = None):
    """(source version, published `<name>--inspect` version, inspection); staging removed afterwards."""
    from components.methods.inspect import inspect_registered
    from components.registry import Registry

    staging = Path(tempfile.mkdtemp(prefix="adaptflow-inspect-"))
    try:
        return inspect_registered(Registry(root), ref, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def inspect(
    ref: str = typer.Argument(..., help="NAME, NAME@vN or NAME@ALIAS of a system with an adapter"),
    root: Path | None = RootOpt,
) -> None:
    """Per layer and module: ‖ΔW‖, effective rank, AdaLoRA's rank allocation, IA3's scaling spread;
    a heatmap and a summary registered as NAME--inspect."""
    from components.methods.inspect import InspectError
    from components.registry import RegistryError

    try:
        source, published, _ = run_inspection(ref, root)
    except (InspectError, RegistryError, OSError) as exc:
        typer.echo(console.error_line(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo((published.path / "inspection.md").read_text())
    status = "registered" if published.created else "already registered (identical inspection)"
    typer.echo(f"{status} {published.ref} (inspects {source.ref})")
    typer.echo(f"heatmap: {published.path / 'heatmap.png'}")


@flow(name="inspect", log_prints=True)
def inspect_flow(system: str) -> str:
    """Inspect a registered system (NAME@vN or NAME@alias); the summary and heatmap show as an artifact."""
    from prefect.artifacts import create_markdown_artifact

    source, published, _ = run_inspection(system)
    png = base64.b64encode((published.path / "heatmap.png").read_bytes()).decode()
    md = (published.path / "inspection.md").read_text().replace("(heatmap.png)", f"(data:image/png;base64,{png})")
    create_markdown_artifact(md, key=f"inspect-{source.name}", description=f"where {source.ref}'s adaptation lives")
    print(f"registered {published.ref} (inspects {source.ref})")
    return published.ref
