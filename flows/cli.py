"""The `adaptflow` command line. Each command group lives in its own module under flows/ and is
registered here by name: a missing module is an import error, never a silently absent command."""

from __future__ import annotations

import typing
from importlib import metadata

import typer

from flows import (
    cmd_chat,
    cmd_compare,
    cmd_compose,
    cmd_export,
    cmd_index,
    cmd_inspect,
    cmd_query,
    cmd_registry,
    cmd_run,
    cmd_spec,
    cmd_ui,
    cmd_worker,
    console,
)
from flows.options import VerboseOpt

NAMES = {"str": "TEXT", "Path": "PATH", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def _click_metavar(param, ctx) -> str:
    """TEXT, PATH, INTEGER, [a|b] (click's names) where this typer version prints <str>, <list[Path]>."""
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(c) for c in desc.choices or ()) + "]"
    annotation = typing.get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    label = "PATH" if desc.is_path else NAMES.get(getattr(annotation, "__name__", ""), "VALUE")
    return label + ("..." if desc.is_list else "")


typer.core._TyperParameter.display_type = _click_metavar

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None, help="Adapt LLMs to tasks declared in YAML specs.")

COMMANDS = (
    cmd_spec.validate, cmd_spec.schema, cmd_spec.plan, cmd_index.index, cmd_run.run, cmd_compare.compare,
    cmd_query.query, cmd_query.serve, cmd_ui.ui, cmd_worker.worker, cmd_chat.chat, cmd_inspect.inspect, cmd_compose.compose,
    cmd_export.export,
)
for command in COMMANDS:
    app.command()(command)
app.add_typer(cmd_registry.registry_app, name="registry")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adaptflow {metadata.version('adaptflow')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
    verbose: bool = VerboseOpt,
) -> None:
    """Adapt LLMs to tasks declared in YAML specs."""
    console.set_verbose(verbose)


if __name__ == "__main__":
    app()
