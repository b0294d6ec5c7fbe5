"""What the terminal shows: our lines and the run's, not libraries' noise; an error as one line.

Without `-v`: library warnings and debug lines, Prefect's per-task "Finished in state" lines, model
loading bars and the engine's crash tracebacks stay off the screen. Everything still goes to a log
file under $ADAPTFLOW_HOME/logs/, whose path an error line prints. `-v` shows it all on screen.

Exit codes (README "Exit codes"): 0 done or up to date; 1 an error (spec, data, registry, disk);
2 a usage error (typer); 3 registered but a gate failed, so no alias moved; 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_GATES_FAILED = 0, 1, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM
OURS = ("components", "vectorstore", "flows", "adaptflow")
KEEP_LOGS = 100  # log files kept under $ADAPTFLOW_HOME/logs (oldest removed first)
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
TEMPORARY_SERVER = "ADAPTFLOW_TEMPORARY_SERVER"  # set while a run uses a server it will stop
_state: dict = {"verbose": False, "log": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a flow run (inside one, Prefect raises its TerminationSignal)."""


def verbose() -> bool:
    return _state["verbose"] or os.environ.get("ADAPTFLOW_VERBOSE") == "1"


def set_verbose(on: bool) -> None:
    _state["verbose"] = _state["verbose"] or on
    if verbose():
        os.environ["ADAPTFLOW_VERBOSE"] = "1"  # child processes (compare) inherit it


class ConsoleFilter(logging.Filter):
    """Keep the run's own lines and real errors; drop what the user did not cause (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        name = record.name
        if name.startswith(RUN_LOGGERS):
            if record.getMessage().startswith("View at ") and os.environ.get(TEMPORARY_SERVER) == "1":
                return False  # a link into a server that stops when the command ends
            # the engine's failure reports repeat the error once per task and flow: the CLI prints one line
            return record.levelno < logging.ERROR and not record.getMessage().startswith("Finished in state")
        if name.split(".")[0] in OURS:
            return record.levelno >= logging.WARNING and not record.exc_info
        return record.levelno >= logging.ERROR and not record.exc_info


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed by a concurrent command
        return 0.0


def _log_path(command: str) -> Path:
    from components.store.fileio import adaptflow_home

    folder = adaptflow_home() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only $ADAPTFLOW_HOME must not hide the error the command is about to report
        folder = Path(tempfile.gettempdir()) / "adaptflow-logs"
        folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(folder.glob("*.log"), key=_mtime)[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def quiet_console() -> None:
    """Attach the filter to the root logger's screen handlers (again after Prefect configures logging)."""
    root = logging.getLogger()
    screens = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    if not screens:
        screens = [logging.StreamHandler(sys.stderr)]
        screens[0].setFormatter(logging.Formatter("%(asctime)s | %(message)s", "%H:%M:%S"))
        root.addHandler(screens[0])
    for handler in screens:
        if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    if _state["log"] is not None and not any(getattr(h, "adaptflow", False) for h in root.handlers):
        root.addHandler(_file_handler(_state["log"]))


def _file_handler(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.adaptflow = True
    return handler


def setup(command: str, verbose_flag: bool = False) -> Path:
    """Quiet the terminal for one command; returns the log file that gets everything."""
    set_verbose(verbose_flag)
    if not verbose():
        # read by huggingface_hub / transformers at import: no "Loading weights" bars, no info chatter
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("transformers", "huggingface_hub"):
            if name in sys.modules:  # imported already: the env var came too late
                _quiet_module(name)
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> filtered like a library
    warnings.simplefilter("default")
    _state["log"] = _log_path(command)
    quiet_console()
    return _state["log"]


def _quiet_module(name: str) -> None:
    if name == "transformers":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    elif name == "huggingface_hub":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def after_prefect_import() -> None:
    """Prefect replaces the root logger's handlers when it configures logging: filter the new ones."""
    quiet_console()


def install_sigterm() -> None:
    """SIGTERM becomes an exception, so `finally` blocks stop the temporary server (no orphans)."""

    def raise_terminated(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, or SIGTERM (ours outside a flow run, Prefect's TerminationSignal inside one)."""
    return isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"


def is_sigterm(exc: BaseException) -> bool:
    return isinstance(exc, Terminated) or type(exc).__name__ == "TerminationSignal"


def _write_traceback(exc: BaseException) -> Path | None:
    path = _state["log"]
    if path is None:
        return None
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(exc)))
    return path


def is_known(exc: BaseException) -> bool:
    """Our own error types and OSErrors (a read-only registry, a full disk) carry a fix in their message."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in OURS


def _os_fix(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write{where}: {exc.strerror}; make it writable, or point --root / $ADAPTFLOW_REGISTRY "
                "(registry) or $ADAPTFLOW_HOME (caches) at a writable folder")
    if exc.errno == errno.ENOSPC:
        return f"no space left writing{where}; free space there or move $ADAPTFLOW_HOME / the registry to a larger disk"
    return f"{exc.strerror or exc}{where}"


def error_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and type(exc).__module__.split(".")[0] not in OURS:
        return f"error: {_os_fix(exc)}"
    text = str(exc).strip() or type(exc).__name__
    if not is_known(exc):
        return f"error: unexpected {type(exc).__name__}: {text.splitlines()[0]}"
    return f"error: {text}"


def report_error(exc: BaseException) -> int:
    """Print one `error:` line (and where the traceback went); return the exit code."""
    log = _write_traceback(exc)
    if verbose():
        traceback.print_exception(exc, file=sys.stderr)
    print(error_line(exc), file=sys.stderr)
    if log is not None and not verbose():
        hint = "" if is_known(exc) else "; this looks like a bug, please report it with that file"
        print(f"  full traceback: {log} (or rerun with -v){hint}", file=sys.stderr)
    return EXIT_ERROR
