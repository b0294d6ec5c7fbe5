"""`adaptflow serve --engine vllm --launch` against the built-in engine, on the built-in model in fp32:
the same greedy request gives the same answer text for a LoRA system, and a knowledge system answers with its
citations. Needs vLLM's CPU build in .venv-vllm (`make vllm`); slow (vLLM starts in 20-120 s on 2 cores)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.vllm_launch import default_venv, stop

REPO = Path(__file__).resolve().parents[2]
VENV = default_venv() if default_venv().is_absolute() else REPO / default_venv()
pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(not list(VENV.glob("lib/python3*/site-packages/vllm/__init__.py")),
                                 reason=f"vLLM's CPU build is not installed in {VENV} (make vllm)")]
TICKETS = ["Where is my parcel? It is a week late.", "My card was charged twice this month.",
           "The app crashes when I open settings.", "How do I change my email address?"]
LORE_QUESTION = "Who founded the city?"


def _register(root: Path, work: Path) -> None:
    """Two LoRA systems (random weights, bench.serve_load) and lore-knowledge: its index, the shipped reader."""
    from bench.serve_load import register
    from components.registry import Registry
    from components.spec.load import load_spec
    from vectorstore.build import build_index

    register(root, work)
    spec = load_spec(REPO / "specs" / "lore-knowledge.yaml", workspace=REPO)
    staging = work / "stage-lore"
    build_index(spec.knowledge, staging / "index")
    reader = REPO / "components" / "resources" / "reader-adapter"
    (staging / "adapter").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(reader / name, staging / "adapter" / name)
    manifest = {"spec": spec.model_dump(mode="json"), "metrics": {}, "gates": {"passed": True, "results": []}}
    registry = Registry(root)
    registry.publish("lore-knowledge", staging, manifest)
    registry.promote("lore-knowledge@v1", "production", force=True)  # no evaluation ran: promoted by hand


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = os.environ | {"ADAPTFLOW_VLLM_VENV": str(VENV)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--threads", "1",
                             "--root", str(root), *extra], cwd=REPO, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(1)
    stop(proc)
    raise TimeoutError(log.read_text()[-3000:])


def _answers(url: str) -> dict:
    out = {}
    for i, ticket in enumerate(TICKETS):
        model = ("load-a@latest", "load-b@v1")[i % 2]
        body = {"model": model, "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": ticket}]}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        out[(model, ticket)] = r.json()["choices"][0]["message"]["content"]
    r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
        "model": "lore-knowledge@production", "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": LORE_QUESTION}]})
    assert r.status_code == 200, r.text
    out["lore"] = r.json()
    return out


def test_vllm_engine_answers_as_the_builtin_engine(tmp_path):
    root = tmp_path / "registry"
    _register(root, tmp_path / "work")
    proc, url = _serve(root, tmp_path / "builtin.log")
    try:
        builtin = _answers(url)
    finally:
        stop(proc)
    proc, url = _serve(root, tmp_path / "vllm.log", "--engine", "vllm", "--launch", "--vllm-timeout", "600")
    try:
        served = _answers(url)
        health = httpx.get(url + "/health").json()
        metrics = httpx.get(url + "/metrics").text
    finally:
        stop(proc, grace_s=90)  # SIGTERM: uvicorn stops, then Adaptflow stops vLLM (up to 20 s) before it exits
    assert health["engine"]["engine"] == "vllm"
    for key, text in builtin.items():
        if key != "lore":
            assert served[key] == text, key  # greedy, fp32, the same prompt ids: the same answer text
    lore_b, lore_v = builtin["lore"], served["lore"]
    assert lore_v["citations"] and lore_v["citations"] == lore_b["citations"]
    assert lore_v["choices"][0]["message"]["content"] == lore_b["choices"][0]["message"]["content"]
    assert 'adaptflow_requests_total{endpoint="chat",status="200",system="lore-knowledge@v1"}' in metrics
    pid = int(re.search(r"vLLM healthy at \S+ after \d+ s \(pid (\d+)\)", (tmp_path / "vllm.log").read_text())[1])
    assert proc.returncode in (0, 143) and not _alive(pid), "vLLM was left running"


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
