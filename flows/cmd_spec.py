"""`adaptflow validate | schema | plan`: the spec commands (no Prefect needed)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from adaptflow.preflight import inputs_report
from components.spec import TaskSpec
from components.spec.load import SpecError, load_spec
from flows import console
from flows.options import VerboseOpt, WorkspaceOpt


def validate(specs: list[Path] = typer.Argument(..., help="spec files"), workspace: Path | None = WorkspaceOpt) -> None:
    """Check spec files; print every error with file, line, key path and fix. Exit 1 if any fails."""
    failed = 0
    for path in specs:
        try:
            spec = load_spec(path, workspace)
            notes, problems = inputs_report(spec, path)  # behavior data, evaluation rows, documents, gold doc ids
            if problems:
                raise SpecError(problems)
        except SpecError as exc:
            failed += 1
            for issue in exc.issues:
                typer.echo(str(issue), err=True)
            continue
        typer.echo(f"{path}: ok ({spec.name}, goal {spec.goal})")
        for note in notes:
            typer.echo(f"  {note}")
    if failed:
        typer.echo(f"{failed} of {len(specs)} spec(s) invalid", err=True)
        raise typer.Exit(1)


def spec_json_schema() -> dict:
    schema = TaskSpec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Adaptflow task spec"
    return schema


def schema() -> None:
    """Print the JSON Schema of the spec (for editors, validators and the UI form)."""
    typer.echo(json.dumps(spec_json_schema(), indent=2))


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _names(names: list[str] | str) -> str:
    return names if isinstance(names, str) else "[" + ", ".join(names) + "]"


def _modules_line(choice: dict) -> str:
    """'behavior.adapter: target_modules [c_attn] on 2 layers (peft's default for model_type 'gpt2')'."""
    names = _names(choice["target_modules"]) + (f" = {_names(choice['selects'])}" if "selects" in choice else "")
    line = f"  {choice['key']}: target_modules {names} on {choice['layers']} layers ({choice['source']})"
    if "feedforward_modules" in choice:
        line += f"; feedforward_modules {_names(choice['feedforward_modules'])}"
    return line


def render_plan(plan: dict) -> str:
    lines = [f"# plan for {plan['spec_file']}", "", "## resolved spec", yaml.safe_dump(plan["resolved_spec"], sort_keys=False)]
    if plan["derived_defaults"]:
        lines.append("## derived defaults")
        lines += [f"  {k}: {v}" for k, v in plan["derived_defaults"].items()]
    r = plan["route"]
    lines += ["", f"## route: {r['label']}"] + [f"  - {reason}" for reason in r["reasons"]]
    if "promotion" in plan:
        lines += ["", "## promotion", f"  {plan['promotion']}"]
    if "answers" in plan:  # knowledge.reader_model (issue 24)
        a = plan["answers"]
        lines += ["", f"## knowledge answers written by {a['model']} ({a['from']})",
                  f"  loads from {a['path']}, weights {str(a['weights_hash'])[:12]}; chat template: {a['chat_template']}; "
                  f"reading adapter: {a['reader']}"]
    if "target_modules" in plan:
        lines += ["", "## target modules"] + [_modules_line(c) for c in plan["target_modules"]]
    if "parameters" in plan:
        p = plan["parameters"]
        lines += ["", "## parameters", f"  trainable {_fmt_int(p['trainable'])} of {_fmt_int(p['total'])} ({p['percent']:.4f} %)"]
    if "memory_estimate" in plan:
        m = plan["memory_estimate"]
        ckpt = m["gradient_checkpointing"]
        parts = ", ".join(f"{k.removesuffix('_mb')} {m[k]:,.0f}" for k in m if k.endswith("_mb") and k[:5] not in ("total", "other"))
        lines += ["", f"## training memory on {m['device']}, {m['compute_dtype']}",
                  f"  estimate {m['total_mb'] / 1024:,.2f} GB ({parts} MB)",
                  f"  gradient checkpointing {'on' if ckpt['enabled'] else 'off'} ({ckpt['why']}); "
                  f"{'off' if ckpt['enabled'] else 'on'}: {m['other_choice_total_mb'] / 1024:,.2f} GB",
                  f"  error of this estimate: {m['error']}"]
    for split, st in plan.get("data", {}).items():
        lines.append(
            f"  {split}: {st['count']} examples, {st['tokens']:,} tokens ({st['answer_tokens']:,} answer), "
            f"length p50 {st['p50']} p90 {st['p90']} max {st['max']}; over max_seq_len {st['max_seq_len']}: "
            f"{st['over_length']} (truncated {st['truncated']}, dropped {st['dropped']})"
        )
    lines += [f"  note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def plan(
    spec: Path = typer.Argument(..., help="spec file"),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda: plan training memory for this device "
                                      "(default: this machine's)"),
    verbose: bool = VerboseOpt,
) -> None:
    """Show the resolved spec, the route, data statistics, trainable parameters and a memory estimate."""
    console.setup("plan", verbose)  # before transformers is imported: no library warnings
    from components.routing.plan import make_plan

    try:
        task = load_spec(spec, workspace)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    try:
        result = make_plan(task, str(spec), device=device)
    except Exception as exc:  # noqa: BLE001 - one `error:` line; the traceback goes to the log file
        raise typer.Exit(console.report_error(exc)) from None
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else render_plan(result))
