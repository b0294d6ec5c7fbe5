"""`adaptflow ui`: a local Prefect server plus the adapt / evaluate / query / compare deployments.

The server outlives the command on purpose: runs started from the CLI afterwards reuse it (they
show in the UI and an unchanged re-run is recorded in about a second). `adaptflow ui --stop`
stops it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flows import console
from flows.options import RootOpt, VerboseOpt
from flows.server import DEFAULT_PORT


def ui(
    port: int = typer.Option(DEFAULT_PORT, help="Prefect server port on 127.0.0.1 ($ADAPTFLOW_PREFECT_PORT, else 4200)"),
    stop: bool = typer.Option(False, "--stop", help="stop the Prefect server an earlier `adaptflow ui` left running"),
    pool: str | None = typer.Option(None, "--pool", help="serve the deployments through this Prefect work pool "
                                    "(type process, created if missing) and a worker, instead of in this process"),
    root: Path | None = RootOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Start (or reuse) a local Prefect server and serve the deployments until Ctrl-C; the server stays up."""
    from flows import server

    if stop:
        typer.echo(server.stop_kept_server(port))
        return
    log = console.setup("ui", verbose)
    if root is not None:  # the deployments (and the query form's dropdown) read the registry from here
        os.environ["ADAPTFLOW_REGISTRY"] = str(root.expanduser().absolute())
    proc = server.start_server(port, log=log.with_suffix(".server.log"))
    server.remember(proc, port)
    os.environ["PREFECT_API_URL"] = server.api_url(port)
    typer.echo(f"Prefect UI: http://127.0.0.1:{port}  ({'started' if proc else 'already running'}; "
               "it stays up after Ctrl-C so CLI runs show here too; `adaptflow ui --stop` stops it)")
    from prefect import serve

    from flows.deployments import all_deployments
    from flows.record import record_noted

    console.after_prefect_import()
    if recorded := record_noted(server.api_url(port)):
        typer.echo(f"recorded {recorded} unchanged run(s) noted while no server was up")
    stopped = (f"stopped serving the deployments; the Prefect server is still running at http://127.0.0.1:{port} "
               "(`adaptflow ui --stop` stops it)")
    if pool is not None:  # flows/pools.py: deployments on the pool, a worker in the foreground
        from flows.pools import serve_pool

        try:
            serve_pool(pool, typer.echo)
        except KeyboardInterrupt:
            pass
        typer.echo(stopped.replace("serving the deployments", f"the worker on pool {pool!r}"))
        return
    _stop_on_first_ctrl_c(stopped)
    try:
        serve(*all_deployments())
    except KeyboardInterrupt:
        pass
    typer.echo(stopped)


UI_STOP_GRACE_S = 10.0


def _stop_on_first_ctrl_c(message: str) -> None:
    """One Ctrl-C ends `serve`. A SIGINT that lands while Prefect's runner is still starting was absorbed by its
    task group (seen in the full suite: the command ran on until a second Ctrl-C). Our handler raises the usual
    KeyboardInterrupt and arms a watchdog: if serving has not unwound UI_STOP_GRACE_S later, say what stopped and
    exit. The Prefect server runs in its own session and stays up either way, as the message says."""
    import signal
    import threading

    def watchdog() -> None:
        typer.echo(message)
        os._exit(0)

    def on_sigint(signum, frame) -> None:
        timer = threading.Timer(UI_STOP_GRACE_S, watchdog)
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
