"""`adaptflow compare SPEC [--methods ...]`: the adapter trade-off for one task, in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from components.compare import SELECT_RULES, CompareError, expand_variants
from components.specload import SpecError, load_spec
from flows.cli import app


def _method_list(methods: str | None) -> list[str] | None:
    return [m.strip() for m in methods.split(",") if m.strip()] if methods else None


@app.command()
def compare(
    spec: Path = typer.Argument(..., help="spec file"),
    methods: str | None = typer.Option(
        None, "--methods", help="comma-separated adapter methods, e.g. lora,qlora,ia3,prompt_tuning,full "
        "(replaces the spec's compare.methods/variants; default: those, else the spec's method + those five)"),
    select: str | None = typer.Option(
        None, "--select", help=f"{' | '.join(SELECT_RULES)} (default: the spec's compare.select, else best_score)"),
    parallel: int | None = typer.Option(
        None, "--parallel", min=1, help="variants trained at once (default: from free cores and memory)"),
    workspace: Path | None = typer.Option(None, "--workspace", help="root that spec paths must stay inside"),
) -> None:
    """Train and evaluate the spec's behavior half once per adapter variant; print the comparison table,
    store report and chart in the registry, register the selected variant under the spec's name."""
    wanted = _method_list(methods)
    try:
        if select is not None and select not in SELECT_RULES:
            raise CompareError(f"--select '{select}' is unknown; use one of {', '.join(SELECT_RULES)}")
        variants = expand_variants(load_spec(spec, workspace), wanted)  # fail fast, before Prefect starts
    except (SpecError, CompareError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"comparing {len(variants)} variants: {', '.join(v.id for v in variants)}")
    from flows.compare import compare as compare_flow

    out = compare_flow(str(spec), wanted, str(workspace) if workspace else None, select, parallel)
    typer.echo(Path(out["markdown"]).read_text())
    typer.echo(f"report: {out['report']}\nchart: {out['chart']}\ncomparison: {out['comparison']}")
    typer.echo(f"selected: {out['selected'] or 'none'} ({out['selection']['reason']})")
