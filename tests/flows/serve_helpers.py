"""`adaptflow serve` as a real subprocess on a free loopback port (shared by the API test modules)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STARTUP_S = 300  # seconds for `serve` to load its systems: a few on a quiet machine, far more on a loaded one


@contextlib.contextmanager
def running_server(registry: Path, log: Path, *flags: str) -> Iterator[str]:
    """`python -m flows.cli serve --port P [flags]` on `registry`; yields its base URL, then stops it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ADAPTFLOW_API_KEY"} | {"ADAPTFLOW_REGISTRY": str(registry)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port), *flags], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert proc.poll() is None, f"adaptflow serve exited:\n{log.read_text()}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /health within {STARTUP_S} s:\n{log.read_text()}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of GET /metrics (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
