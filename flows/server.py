"""Prefect servers on 127.0.0.1: the long-lived one `adaptflow ui` leaves up, and a run's temporary one.

Which API a command uses (`prefect_api`), in order:
1. `$PREFECT_API_URL`, when set: a server the user runs (nothing is started or stopped);
2. the local server `adaptflow ui` started and left running on port 4200 (`$ADAPTFLOW_PREFECT_PORT`);
3. otherwise a temporary server, started for this command and stopped when it ends.

Every server we start runs in its own session: the Ctrl-C a terminal sends to the command's
process group does not reach it, so the interrupted flow run can still be marked Crashed, and
the command then stops it (on SIGTERM too). Prefect's own temporary server shared the command's
process group, died first, and left runs "Running" and 480 lines of connection errors behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from components.store.fileio import adaptflow_home, atomic_write_json

DEFAULT_PORT = int(os.environ.get("ADAPTFLOW_PREFECT_PORT", "4200"))
DRAIN_SECONDS = 3.0  # logs and events still queued for the server when a run ends


def api_url(port: int = DEFAULT_PORT) -> str:
    return f"http://127.0.0.1:{port}/api"


def healthy(port: int = DEFAULT_PORT, url: str | None = None) -> bool:
    try:
        with urllib.request.urlopen((url or api_url(port)) + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def server_env(port: int = DEFAULT_PORT, home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=api_url(port),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=api_url(port),
    )
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see {log or 'its output'}")
        time.sleep(0.2)
    stop_process(proc)
    raise TimeoutError(f"prefect server did not answer on {api_url(port)} within {timeout:.0f} s; see {log or 'its output'}")


def start_server(port: int = DEFAULT_PORT, home: Path | None = None, log: Path | None = None,
                 timeout: float = 120.0) -> subprocess.Popen | None:
    """Start `prefect server start` (API + UI) unless one already answers on the port; wait until healthy."""
    if healthy(port):
        return None
    prefect = Path(sys.executable).with_name("prefect")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the server outlives this call
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(port, home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _wait_healthy(proc, port, timeout, log)
    return proc


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the server's whole session (uvicorn and anything it forked), SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def temporary_server(log: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, int]:
    """Prefect's API without the UI (what Prefect's own temporary server runs), in its own session."""
    import prefect
    from prefect.settings import get_current_settings

    port = free_port()
    env = server_env(port) | get_current_settings().to_environment_variables(exclude_unset=True)
    env |= {"PREFECT_API_URL": api_url(port), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    out.close()
    _wait_healthy(proc, port, timeout, log)
    return proc, port


def drain_prefect() -> None:
    """Send the logs and events still queued, while the server is up (else: connection errors at exit)."""
    with contextlib.suppress(Exception):
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=DRAIN_SECONDS, at_exit=False)


def running_url() -> str | None:
    """The API a command should use without starting anything: $PREFECT_API_URL, else the kept local server."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    return api_url(DEFAULT_PORT) if healthy(DEFAULT_PORT) else None


@contextlib.contextmanager
def prefect_api(log: Path) -> Iterator[str]:
    """Point Prefect at a running server, or at a temporary one stopped on exit (see the module doc)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, proc = running_url(), None
    if url is None:
        proc, port = temporary_server(log)
        url = api_url(port)
    os.environ["PREFECT_API_URL"] = url  # children (compare's training processes) inherit it
    if proc is not None:
        os.environ["ADAPTFLOW_TEMPORARY_SERVER"] = "1"
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                if proc is not None:
                    drain_prefect()
    finally:
        if proc is not None:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan it
            try:
                stop_process(proc)
            finally:
                signal.signal(signal.SIGINT, previous)
                os.environ.pop("PREFECT_API_URL", None)
                os.environ.pop("ADAPTFLOW_TEMPORARY_SERVER", None)


# --- the server `adaptflow ui` leaves running ------------------------------------------------


def _pidfile(port: int) -> Path:
    return adaptflow_home() / f"prefect-server-{port}.json"


def remember(proc: subprocess.Popen | None, port: int) -> None:
    """Note the server `adaptflow ui` started (or reuses) and this ui process serving the deployments,
    for `--stop`. A server this command did not start and no earlier ui noted stays unnoted."""
    path = _pidfile(port)
    noted = json.loads(path.read_text()) if path.exists() else {}
    if proc is not None:
        noted = {"pid": proc.pid, "port": port}
    if noted:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, noted | {"ui_pid": os.getpid()})  # `--stop` may read it at any moment


def _signal(pid: int | None, sig: int, group: bool = False) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), sig) if group else os.kill(pid, sig)


def _alive(pid: int | None) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    import psutil

    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def stop_kept_server(port: int = DEFAULT_PORT, timeout: float = 10.0) -> str:
    """Stop the server an earlier `adaptflow ui` started and left running (and its serving process, if
    it still runs); returns what happened, in words. Only what the pid file names is signalled."""
    path = _pidfile(port)
    if not path.exists():
        if healthy(port):
            return (f"the Prefect server on port {port} was not started by `adaptflow ui` here (no {path}); "
                    "stop it where it was started")
        return f"no Prefect server is running on port {port}"
    noted = json.loads(path.read_text())
    server, ui = noted.get("pid"), noted.get("ui_pid")
    if ui != os.getpid():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):  # SIGINT: as Ctrl-C in its terminal
            if not _alive(ui):
                break
            _signal(ui, sig)
            _wait(lambda: _alive(ui), timeout)
    _signal(server, signal.SIGTERM, group=True)  # the server runs in its own session: its whole group
    _wait(lambda: healthy(port), timeout)
    if healthy(port):
        _signal(server, signal.SIGKILL, group=True)
    path.unlink(missing_ok=True)
    return f"stopped the Prefect server on port {port} (pid {server})"
