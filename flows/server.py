"""A local Prefect server (SQLite, telemetry off) on 127.0.0.1, started when none is running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_PORT = 4200


def api_url(port: int = DEFAULT_PORT) -> str:
    return f"http://127.0.0.1:{port}/api"


def healthy(port: int = DEFAULT_PORT) -> bool:
    try:
        with urllib.request.urlopen(api_url(port) + "/health", timeout=2) as resp:
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


def start_server(port: int = DEFAULT_PORT, home: Path | None = None, log: Path | None = None,
                 timeout: float = 120.0) -> subprocess.Popen | None:
    """Start `prefect server start` unless one already answers on the port; wait until healthy."""
    if healthy(port):
        return None
    prefect = Path(sys.executable).with_name("prefect")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the server outlives this call
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(port, home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(port):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see {log or 'its output'}")
        time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"prefect server did not answer on {api_url(port)} within {timeout:.0f} s")
