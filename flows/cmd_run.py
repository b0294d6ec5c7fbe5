"""`adaptflow run SPEC`: the main flow from the command line, stoppable with one Ctrl-C.

An unchanged spec is decided "up to date" from the stage keys and the registry before any Prefect
server starts (flows.keys.up_to_date): that takes about a second. It is recorded as a flow run at
once when a Prefect server is up (`adaptflow ui` leaves one running, or $PREFECT_API_URL); with none,
it is noted and recorded by the next command that has a server (flows.record): starting one only to
record that nothing ran would cost ~10 s.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import typer

from flows import console
from flows.options import RootOpt, VerboseOpt, WorkspaceOpt


def run(
    spec: Path = typer.Argument(..., help="spec file", metavar="SPEC"),
    workspace: Path | None = WorkspaceOpt,
    root: Path | None = RootOpt,
    processes: int | None = typer.Option(
        None, "--processes", min=1, metavar="N",
        help="train on N processes through `accelerate launch` (sets training.distributed.processes)"),
    pool: str | None = typer.Option(None, "--pool", help="submit the run to this Prefect work pool's `adapt` "
                                    "deployment and follow it (`adaptflow worker --pool NAME` serves it)"),
    verbose: bool = VerboseOpt,
) -> None:
    """Train, index, evaluate and register the system a spec declares; prints a summary and NAME@vN.

    Exit codes: 0 registered (or up to date) with its gates passed; 1 an error; 3 registered, but a
    gate failed and no alias moved; 130 stopped by Ctrl-C; 143 stopped by SIGTERM.
    """
    log = console.setup("run", verbose)
    console.install_sigterm()
    started = time.time()
    try:
        code = _run(spec, workspace, root, log, processes, pool)
    except (typer.Exit, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C, SIGTERM and errors each end in one line
        code = _stopped(exc, spec, started) if console.is_interrupt(exc) else console.report_error(exc)
    raise typer.Exit(code)


def _run(spec_file: Path, workspace: Path | None, root: Path | None, log: Path, processes: int | None = None,
         pool: str | None = None) -> int:
    from components.registry import Registry
    from components.spec.load import load_spec
    from components.training.distributed import with_processes
    from flows import keys

    spec = with_processes(load_spec(spec_file, workspace), processes)  # fail fast, before Prefect starts
    registry = Registry(root)
    os.environ["ADAPTFLOW_REGISTRY"] = str(registry.root)  # the flow's publish task reads it
    if (found := keys.up_to_date(spec, registry)) is not None:
        _record_unchanged(spec_file, found.ref)
        typer.echo(f"up to date: {found.ref}, nothing ran")
        return _verdict(found)
    if pool is not None:
        from flows.pool_runs import PoolError
        from flows.run_pool import run_on_pool

        if processes is not None:
            raise PoolError("--processes is not passed to a pool's `adapt` deployment; set training.distributed: "
                             "{processes: N} in the spec instead (the worker's flow run reads the spec)")

        return run_on_pool(pool, spec, spec_file, workspace, registry, _verdict)
    names = registry.names()
    before_versions = {v.number for v in registry.versions(spec.name)} if spec.name in names else set()
    before_aliases = registry.aliases(spec.name) if spec.name in names else {}

    from flows.server import prefect_api

    with prefect_api(log.with_suffix(".server.log")) as url:
        from flows.pipeline import adapt
        from flows.record import record_noted

        console.after_prefect_import()
        _courtesy(lambda: record_noted(url))
        ref = adapt(str(spec_file), str(workspace) if workspace else None, processes)
    from flows.summary import run_summary

    typer.echo("\n".join(run_summary(registry, ref, before_versions, before_aliases)))
    version = registry.resolve(ref)
    if version.number in before_versions:  # stages ran again (a cleared cache) and made identical content
        typer.echo(f"already registered: {ref} holds this content; nothing new")
    else:
        typer.echo(f"registered {ref}")
    return _verdict(version)


def _verdict(version) -> int:
    from components.registry import gate_status
    from flows.summary import failed_gates

    if gate_status(version.manifest) != "failed":
        return console.EXIT_OK
    alias = ((version.manifest.get("spec") or {}).get("evaluation") or {}).get("promote_to") or "production"
    typer.echo(f"error: gate failed: {failed_gates(version.manifest)}; {version.ref} is registered but no alias "
               f"moved (exit {console.EXIT_GATES_FAILED}). Promote it anyway with "
               f"`adaptflow registry promote {version.ref} {alias} --force`", err=True)
    return console.EXIT_GATES_FAILED


def _record_unchanged(spec_file: Path, ref: str) -> None:
    """A flow run for the record on a server that is up; with none, noted for the next one (flows.record)."""
    from flows.server import running_url

    if (url := running_url()) is None:
        from flows.unrecorded import note_unrecorded

        note_unrecorded(str(spec_file), ref)
        return
    from flows.record import record_noted, record_unchanged

    _courtesy(lambda: (record_noted(url), record_unchanged(url, str(spec_file.absolute()), ref)))


def _courtesy(record) -> None:
    try:
        record()
    except Exception:  # noqa: BLE001 - the record is a courtesy; the result stands without it
        logging.getLogger(__name__).warning("could not record unchanged runs in Prefect", exc_info=True)


def _saved_checkpoint(started: float) -> str | None:
    from components.store.stages import StageStore

    steps = [p.parent for p in StageStore().root.glob("train/*.work/checkpoints/step-*/complete.json")
             if p.stat().st_mtime >= started]
    return max(steps, key=lambda p: p.stat().st_mtime).name if steps else None


def _stopped(exc: BaseException, spec_file: Path, started: float) -> int:
    """One line: what was kept and how to go on; the run is marked Crashed by then (server still up)."""
    sigterm = console.is_sigterm(exc)
    step = _saved_checkpoint(started)
    kept = f"training checkpoint {step} and finished stages are kept" if step else "finished stages are kept"
    typer.echo(f"\nstopped ({'SIGTERM' if sigterm else 'Ctrl-C'}): {kept}; "
               f"`adaptflow run {spec_file}` resumes from there", err=True)
    return console.EXIT_TERMINATED if sigterm else console.EXIT_INTERRUPTED
