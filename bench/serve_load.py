"""Many users at once: `adaptflow serve` under 8 concurrent clients vs the same requests one at a time.

    .venv/bin/python -m bench.serve_load

Two LoRA systems (r=8 on q_proj/v_proj, random non-zero weights: what is measured is serving, not what
they learned) on the built-in model are registered in a temporary registry and served by a real
`adaptflow serve` subprocess on loopback. Every request asks for 24 new tokens, greedy, streamed.

- sequential: the requests one at a time. This is the baseline, and each answer is the oracle for the
  same request sent concurrently (greedy, so the answers must be identical).
- concurrent: 8 client threads send the same requests at once, alternating between the two systems.
- `serve_throughput_ratio` = generated tokens/s concurrent / generated tokens/s sequential.
- p50 / p95 request latency and p95 time to first token (first content chunk), concurrent phase.
- `wrong_adapter_answers`: concurrent answers that differ from the same request's sequential answer.
- `rss_growth_pct`: the server's RSS after the concurrent phase vs after warm-up (a leak shows here).
Each phase is bounded (`PHASE_LIMIT_S`); requests not sent in time are counted as not sent. The server runs
torch on one thread (`--threads 1`): on a machine shared with other work, two OpenMP threads that wait on each
other made forward passes 5-10x slower here, at random (the same reason the other benchmarks use one).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.adapter_swap import make_adapters, task_spec  # noqa: E402

CLIENTS = 8
PER_CLIENT = 2
NEW_TOKENS = 24
PHASE_LIMIT_S = 150
SYSTEMS = ("load-a@latest", "load-b@latest")
QUESTIONS = ["Where is my parcel? It is a week late.", "My card was charged twice this month.",
             "The app crashes when I open settings.", "How do I change my email address?"]


def register(root: Path, work: Path) -> None:
    from components.registry import Registry

    registry = Registry(root)
    spec = task_spec("load-a")
    for adapter, name in zip(make_adapters(spec, work), ("load-a", "load-b"), strict=True):
        staging = work / f"stage-{name}"
        (staging / "adapter").mkdir(parents=True)
        for f in adapter.iterdir():
            (staging / "adapter" / f.name).write_bytes(f.read_bytes())
        manifest = {"spec": task_spec(name).model_dump(mode="json"), "metrics": {}, "gates": {"passed": True, "results": []}}
        registry.publish(name, staging, manifest, aliases=["latest"])


def start(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"ADAPTFLOW_REGISTRY": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--max-tokens-cap", "64",
                             "--threads", "1"],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    raise TimeoutError(log.read_text())


def ask(url: str, model: str, question: str) -> dict:
    """One streamed request: {text, tokens, latency_s, ttft_s} or {error}."""
    import httpx

    body = {"model": model, "max_tokens": NEW_TOKENS, "stream": True, "adaptflow": {"retrieval": False},
            "messages": [{"role": "user", "content": question}]}
    start, first, pieces, tokens = time.perf_counter(), None, [], 0
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=PHASE_LIMIT_S) as r:
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.read()[:200]!r}"}
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                content = chunk["choices"][0]["delta"].get("content")
                if content:
                    first = first or time.perf_counter()
                    pieces.append(content)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 - counted as an error
        return {"error": f"{type(exc).__name__}: {exc}"}
    end = time.perf_counter()
    return {"text": "".join(pieces), "tokens": tokens, "latency_s": end - start, "ttft_s": (first or end) - start}


def jobs() -> list[tuple[str, str]]:
    return [(SYSTEMS[(c + i) % 2], QUESTIONS[(c + i // 2) % len(QUESTIONS)]) for c in range(CLIENTS)
            for i in range(PER_CLIENT)]


def concurrent(url: str, todo: list[tuple[str, str]]) -> tuple[list, float]:
    results: list = []
    start = time.perf_counter()

    def client(k: int) -> None:
        for job in todo[k * PER_CLIENT:(k + 1) * PER_CLIENT]:
            if time.perf_counter() - start > PHASE_LIMIT_S:
                return
            results.append((job, ask(url, *job)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def run() -> dict:
    import psutil

    todo = jobs()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        register(tmp / "registry", tmp / "work")
        proc, url = start(tmp / "registry", tmp / "serve.log")
        try:
            server = psutil.Process(proc.pid)
            for model in SYSTEMS:  # warm-up: both adapters loaded, one batch of 8 run
                ask(url, model, QUESTIONS[0])
            concurrent(url, todo[: CLIENTS])
            # the baseline, one at a time; each answer is also the oracle for the same request sent concurrently
            seq_results, seq_s = [], 0.0
            for job in todo:
                if seq_s > PHASE_LIMIT_S:
                    break
                t0 = time.perf_counter()
                seq_results.append((job, ask(url, *job)))
                seq_s += time.perf_counter() - t0
            rss_warm = server.memory_info().rss
            results, conc_s = concurrent(url, todo)
            rss_after = server.memory_info().rss
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    done = [r for _, r in results if "error" not in r]
    oracle = {job: r for job, r in seq_results}
    seq_results = [r for _, r in seq_results]
    errors = [r["error"] for _, r in results if "error" in r] + [r["error"] for r in seq_results if "error" in r]
    wrong = sum(1 for job, r in results if "error" not in r and job in oracle and r["text"] != oracle[job].get("text"))
    seq_tps = sum(r.get("tokens", 0) for r in seq_results) / seq_s
    conc_tps = sum(r["tokens"] for r in done) / conc_s
    return {
        "serve_throughput_ratio": round(conc_tps / seq_tps, 2) if seq_tps else None,
        "concurrent_tokens_per_s": round(conc_tps, 1),
        "sequential_tokens_per_s": round(seq_tps, 1),
        "requests_concurrent": len(results), "requests_sequential": len(seq_results), "requests_planned": len(todo),
        "latency_p50_ms": pct([r["latency_s"] for r in done], 0.5),
        "latency_p95_ms": pct([r["latency_s"] for r in done], 0.95),
        "ttft_p95_ms": pct([r["ttft_s"] for r in done], 0.95),
        "sequential_latency_p50_ms": pct([r["latency_s"] for r in seq_results if "latency_s" in r], 0.5),
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "wrong_adapter_answers": wrong,
        "questions_where_the_adapters_differ": sum(
            oracle[(SYSTEMS[0], q)].get("text") != oracle[(SYSTEMS[1], q)].get("text") for q in QUESTIONS
            if (SYSTEMS[0], q) in oracle and (SYSTEMS[1], q) in oracle),
        "rss_after_warmup_mb": round(rss_warm / 2**20), "rss_after_run_mb": round(rss_after / 2**20),
        "rss_growth_pct": round(100 * (rss_after - rss_warm) / rss_warm, 1),
        "concurrent_wall_s": round(conc_s, 1), "sequential_wall_s": round(seq_s, 1),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
