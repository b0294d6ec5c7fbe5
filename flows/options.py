"""Options shared by several commands, spelled once."""

from __future__ import annotations

import typer

RootOpt = typer.Option(None, "--root", metavar="PATH", help="registry folder (default: $ADAPTFLOW_REGISTRY or ./registry)")
WorkspaceOpt = typer.Option(None, "--workspace", metavar="PATH",
                            help="root that spec paths must stay inside (default: cwd)")
VerboseOpt = typer.Option(False, "--verbose", "-v",
                          help="show library warnings, Prefect's own lines and full tracebacks")
