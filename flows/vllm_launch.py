"""`adaptflow serve --engine vllm --launch`: start vLLM's OpenAI server from its own venv, wait for it, stop it.

vLLM pins its own torch, so it lives in a venv of its own (`make vllm`: `.venv-vllm`, or `--vllm-venv` /
$ADAPTFLOW_VLLM_VENV). It serves the base folder Adaptflow's systems run on (the built-in alias is the
safetensors folder under $ADAPTFLOW_HOME/models/), in float32 unless told otherwise, with runtime LoRA loading
on (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) so the server loads each registered adapter when it is first asked for.

It runs in a session of its own (the terminal's Ctrl-C reaches Adaptflow, which then stops it: SIGTERM to its
process group, SIGKILL after a grace period), and it is told by the kernel to stop if Adaptflow dies without
cleaning up (PR_SET_PDEATHSIG), so no process is left behind. Its output goes to
$ADAPTFLOW_HOME/logs/vllm-PORT.log; a start that fails or passes `--vllm-timeout` says so with the log's tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from components.store.fileio import adaptflow_home

__all__ = ["VENV_ENV", "VllmStart", "default_venv", "launched", "vllm_command"]

VENV_ENV = "ADAPTFLOW_VLLM_VENV"
PR_SET_PDEATHSIG = 1


class VllmStartError(RuntimeError):
    pass


def default_venv() -> Path:
    """$ADAPTFLOW_VLLM_VENV, else `.venv-vllm` in the current folder, else beside the running venv."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser()
    here = Path(".venv-vllm")
    return here if here.exists() else Path(sys.prefix).parent / ".venv-vllm"


@dataclass
class VllmStart:
    """What `--launch` starts: the model folder, how, and where."""

    model: Path
    served_name: str
    venv: Path
    port: int = 0  # 0: a free port
    dtype: str = "float32"
    max_lora_rank: int = 64
    max_loras: int = 4
    max_model_len: int = 2048
    kv_cache_gib: int = 2  # VLLM_CPU_KVCACHE_SPACE
    threads: int | None = None  # OMP threads of vLLM's CPU worker (VLLM_CPU_OMP_THREADS_BIND=nobind + OMP_NUM_THREADS)
    extra_args: list[str] = field(default_factory=list)

    def executable(self) -> Path:
        python = self.venv / "bin" / "python"
        if not python.exists() or not list((self.venv / "lib").glob("python3*/site-packages/vllm/__init__.py")):
            raise VllmStartError(f"no vLLM in {self.venv}; install it with `make vllm`, or point --vllm-venv "
                                 f"(or ${VENV_ENV}) at a venv with vllm-cpu installed")
        return python


def vllm_command(start: VllmStart, port: int) -> list[str]:
    """The server's module, not the `vllm` console script: vllm-cpu's script asks for the distribution `vllm`
    (`importlib.metadata.version("vllm")`), which is named vllm-cpu, and dies before parsing its arguments."""
    return [str(start.executable()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(start.model),
            "--served-model-name", start.served_name,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", start.dtype, "--max-model-len",
            str(start.max_model_len), "--enable-lora", "--max-lora-rank", str(start.max_lora_rank),
            "--max-loras", str(start.max_loras), "--disable-uvicorn-access-log", *start.extra_args]


def vllm_env(start: VllmStart) -> dict[str, str]:
    env = dict(os.environ) | {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
                              "VLLM_CPU_KVCACHE_SPACE": str(start.kv_cache_gib), "VLLM_NO_USAGE_STATS": "1",
                              "DO_NOT_TRACK": "1"}
    if start.threads is not None:
        env |= {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(start.threads)}
    env.pop("VIRTUAL_ENV", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: the kernel sends SIGTERM when the process that started it dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float, log: Path | None = None) -> float:
    """Seconds until GET /health answers 200; VllmStartError if the process exits or the timeout passes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise VllmStartError(f"vLLM exited with status {proc.returncode} while starting; its log ({log}) ends:\n"
                                 f"{_tail(log) if log else ''}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.5)
    where = f"; its log ({log}) ends:\n{_tail(log)}" if log else ""
    raise VllmStartError(f"vLLM at {url} was not healthy after {timeout_s:.0f} s (--vllm-timeout){where}")


def stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to vLLM's process group (its engine core is a child process), SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def launched(start: VllmStart, timeout_s: float = 300.0, echo=print) -> Iterator[str]:
    """Start vLLM, yield its URL once healthy, stop it on the way out (exceptions and Ctrl-C included)."""
    port = start.port or _free_port()
    command = vllm_command(start, port)
    log = adaptflow_home() / "logs" / f"vllm-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    echo(f"starting vLLM ({start.venv}): {' '.join(command[1:])}; log {log}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=vllm_env(start), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        took = wait_healthy(url, proc, timeout_s, log)
        echo(f"vLLM healthy at {url} after {took:.0f} s (pid {proc.pid})")
        yield url
    finally:
        stop(proc)
