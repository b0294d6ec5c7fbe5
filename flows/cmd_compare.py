"""`adaptflow compare SPEC [--methods ...]`: the adapter trade-off for one task, in one command."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from components.compare import (
    SELECT_RULES,
    CompareError,
    check_select_rule,
    expand_variants,
    knowledge_comparison,
)
from components.compare.knowledge import arm_specs
from components.spec.load import SpecError, load_spec
from flows import console
from flows.options import RootOpt, VerboseOpt, WorkspaceOpt
from flows.server import prefect_api


def _method_list(methods: str | None) -> list[str] | None:
    return [m.strip() for m in methods.split(",") if m.strip()] if methods else None


def compare(
    spec: Path = typer.Argument(..., help="spec file"),
    methods: str | None = typer.Option(
        None, "--methods", help="comma-separated adapter methods, e.g. lora,qlora,ia3,prompt_tuning,full "
        "(replaces the spec's compare.methods/variants; default: those, else the spec's method + those five)"),
    select: str | None = typer.Option(
        None, "--select", help=f"{' | '.join(SELECT_RULES)} (default: the spec's compare.select, else best_score)"),
    parallel: int | None = typer.Option(
        None, "--parallel", min=1, help="variants trained at once (default: from free cores and memory)"),
    pool: str | None = typer.Option(
        None, "--pool", help="run each variant's stages as a deployment run on this Prefect work pool "
        "(`adaptflow worker --pool NAME` serves it; --parallel of them at once)"),
    workspace: Path | None = WorkspaceOpt,
    root: Path | None = RootOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Train and evaluate the spec's behavior half once per adapter variant; print the comparison table,
    store report and chart in the registry, register the selected variant under the spec's name."""
    wanted = _method_list(methods)
    try:
        if select is not None:
            check_select_rule(select, "--select")
        loaded = load_spec(spec, workspace)
        knowledge = knowledge_comparison(loaded) and not wanted
        # fail fast, before Prefect starts
        ids = [a for a, _ in arm_specs(loaded)] if knowledge else [v.id for v in expand_variants(loaded, wanted)]
    except (SpecError, CompareError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"comparing {'knowledge injection' if knowledge else str(len(ids)) + ' variants'}: {', '.join(ids)}")
    log = console.setup("compare", verbose)
    console.install_sigterm()
    if root is not None:
        os.environ["ADAPTFLOW_REGISTRY"] = str(root.expanduser().absolute())  # read by the flow's registry
    if pool is not None:
        from flows.server import running_url

        if running_url() is None:
            typer.echo("error: --pool needs the Prefect server the pool's workers use: set PREFECT_API_URL, or start "
                       f"`adaptflow worker --pool {pool}` on this machine first", err=True)
            raise typer.Exit(1)
        os.environ["ADAPTFLOW_COMPARE_POOL"] = pool  # read where a variant's stages start (flows/compare_pool.py)
    try:
        with prefect_api(log.with_suffix(".server.log")):
            from flows.compare import compare as compare_flow

            console.after_prefect_import()
            out = compare_flow(str(spec), wanted, str(workspace) if workspace else None, select, parallel)
    except (typer.Exit, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C, SIGTERM and errors each end in one line
        if not console.is_interrupt(exc):
            raise typer.Exit(console.report_error(exc)) from None
        sigterm = console.is_sigterm(exc)
        typer.echo(f"\nstopped ({'SIGTERM' if sigterm else 'Ctrl-C'}): finished variants are kept; "
                   "run the same command again to continue", err=True)
        raise typer.Exit(console.EXIT_TERMINATED if sigterm else console.EXIT_INTERRUPTED) from None
    typer.echo(Path(out["markdown"]).read_text())
    typer.echo(f"report: {out['report']}" + (f"\nchart: {out['chart']}" if out["chart"] else "")
               + f"\ncomparison: {out['comparison']}")
    if not knowledge:
        typer.echo(f"selected: {out['selected'] or 'none'} ({out['selection']['reason']})")
