"""The `adaptflow` command line. Each command group lives in its own module under flows/."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Adapt LLMs to tasks declared in YAML specs.")


def _register() -> None:
    # Command modules attach themselves to `app`; imported here so `adaptflow --help` lists them all.
    from flows import cmd_spec  # noqa: F401

    for optional in ("cmd_index", "cmd_registry", "cmd_run", "cmd_query", "cmd_serve", "cmd_compare", "cmd_ui"):
        try:
            __import__(f"flows.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"flows.{optional}":
                raise


_register()

if __name__ == "__main__":
    # `python -m flows.cli` runs this file as __main__; command modules attach to `flows.cli.app`.
    from flows.cli import app as _app

    _app()
