"""`adaptflow compose NEW --from A@REF B@REF --how ties --weights 0.5,0.5`: a new system from registered
LoRA systems (adaptflow.compose), evaluated beside each source; the `compose` deployment runs a spec's
`compose:` section from the Prefect UI."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import typer
from prefect import flow

from flows import console
from flows.options import RootOpt


def run_compose(name: str, compose, root: Path | None = None):
    """(registered version, report); the staging folder is removed afterwards."""
    from adaptflow.compose import compose_system
    from components.registry import Registry

    staging = Path(tempfile.mkdtemp(prefix="adaptflow-compose-"))
    try:
        return compose_system(Registry(root), name, compose, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise typer.BadParameter(f"--weights '{text}' is not comma-separated numbers, e.g. 0.5,0.5") from None


def compose(
    new: str = typer.Argument(..., help="name of the new system, [a-z0-9][a-z0-9-]*"),
    more: list[str] = typer.Argument(None, help="further sources after --from (`--from A@v1 B@v2`)", show_default=False),
    sources: list[str] = typer.Option([], "--from", help="registered LoRA systems to compose, NAME@REF"),
    how: str = typer.Option("linear", "--how", help="linear | ties | dare_ties | cat"),
    weights: str | None = typer.Option(None, "--weights", help="one per source, e.g. 0.5,0.5 (default: equal)"),
    density: float = typer.Option(0.5, "--density", help="ties / dare_ties: fraction of each update kept"),
    spec: Path | None = typer.Option(None, "--spec", help="a spec with a `compose:` section instead of the options"),
    root: Path | None = RootOpt,
) -> None:
    """Compose registered LoRA systems with peft's add_weighted_adapter, evaluate the result on each source's
    evaluation set beside the source, and register it with lineage."""
    from pydantic import ValidationError

    from adaptflow.compose import ComposeError
    from components.registry import RegistryError
    from components.spec import ComposeSpec
    from components.spec.load import SpecError, load_spec

    try:
        if spec is not None:
            task = load_spec(spec)
            if task.compose is None:
                raise ComposeError(f"{spec} has no `compose:` section; add one (docs/compose.md) or use --from")
            new, plan = task.name, task.compose
        else:
            plan = ComposeSpec(sources=[*sources, *(more or [])], how=how, weights=_weights(weights), density=density)
        version, _ = run_compose(new, plan, root)
    except ValidationError as exc:
        typer.echo(f"error: {'; '.join(e['msg'] for e in exc.errors())}", err=True)
        raise typer.Exit(1) from None
    except (ComposeError, RegistryError, SpecError, OSError) as exc:
        typer.echo(console.error_line(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo((version.path / "eval" / "report.md").read_text())
    typer.echo(f"registered {version.ref}" + ("" if version.created else " (identical to an existing version)"))


@flow(name="compose", log_prints=True)
def compose_flow(spec_path: str) -> str:
    """Run a spec's `compose:` section: compose its sources, evaluate beside each, register under the spec's name.

    Args:
        spec_path: A spec file with a `compose:` section (docs/compose.md).
    """
    from prefect.artifacts import create_markdown_artifact

    from components.spec.load import load_spec

    task = load_spec(spec_path)
    if task.compose is None:
        raise ValueError(f"{spec_path} has no `compose:` section; add one (docs/compose.md)")
    version, _ = run_compose(task.name, task.compose)
    md = (version.path / "eval" / "report.md").read_text()
    create_markdown_artifact(md, key=f"compose-{task.name}", description=f"{version.ref} beside its sources")
    print(md)
    return version.ref
