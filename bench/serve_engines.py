"""The built-in server against vLLM's CPU build, same model, adapters and prompts (issue 29's table).

    .venv/bin/python -m bench.serve_engines --quick                  # one round, 8 prompts: proves it runs
    .venv/bin/python -m bench.serve_engines --out bench-engines.json # two rounds, every triage eval prompt

Arms, one server up at a time, in A B (C) order each round:
- `adaptflow`: `adaptflow serve` (built-in engine, `--threads 1`), chat completions with NAME@REF models;
- `vllm`: vLLM's OpenAI server from .venv-vllm (`--dtype float32`), the same registered adapter folders passed as
  `--lora-modules NAME=registry/NAME/vN/adapter`, chat completions (vLLM applies the same chat template);
- `adaptflow-vllm` (`--arms` to add it): `adaptflow serve --engine vllm --vllm-url` in front of that vLLM.

Workload: the support-triage evaluation prompts (specs/support-triage.yaml's eval set: its system prompt and
tickets), greedy, max_tokens 32, streamed, requests alternating over two registered triage LoRA systems. With
`--root REG --systems A,B` those are registered systems (real accuracy); without, two LoRA adapters with
random weights (r=8 on q/v, as bench/serve_load.py) are registered in a temporary registry: throughput,
latency and agreement mean the same, accuracy does not. Clients are threads of the official openai client.

Reported per arm, round and client count (1 / 8 / 16): requests/s, output tokens/s (every answer re-tokenized
with the base's tokenizer, the same count for every arm), p50/p95 latency, p50 time to first content token,
errors, accuracy (exact label match), the 1-minute load average when the run began; and per round the share of
answers equal between arms (same prompt, same adapter). JSON on stdout (or --out), markdown rows on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "specs" / "data" / "triage" / "eval.jsonl"
MAX_TOKENS = 32
CLIENTS = (1, 8, 16)
START_TIMEOUT_S = 600
RUN_LIMIT_S = 900  # one (arm, clients) run; requests not sent by then are counted as not sent


def prompts(limit: int | None) -> list[tuple[list[dict], str]]:
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    out = [([m for m in r["messages"] if m["role"] != "assistant"], r["messages"][-1]["content"]) for r in rows]
    return out[:limit] if limit else out


def register_random(root: Path) -> list[str]:
    from bench.serve_load import register

    register(root, Path(tempfile.mkdtemp(prefix="engines-")))
    return ["load-a@v1", "load-b@v1"]


def adapter_dirs(root: Path, refs: list[str]) -> dict[str, Path]:
    from components.registry import Registry

    registry = Registry(root)
    return {ref: registry.resolve(ref).path / "adapter" for ref in refs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, log: Path) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def start_adaptflow(root: Path, logs: Path, vllm_url: str | None = None) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = logs / f"adaptflow-{port}.log"
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--threads", "1", "--root", str(root),
           "--max-tokens-cap", "64"]
    if vllm_url:
        cmd += ["--engine", "vllm", "--vllm-url", vllm_url]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def start_vllm(base: Path, loras: dict[str, Path], venv: Path, logs: Path) -> tuple[subprocess.Popen, str, Path]:
    from flows.vllm_launch import VllmStart, vllm_command, vllm_env

    port = free_port()
    log = logs / f"vllm-{port}.log"
    start = VllmStart(base, "base", venv, max_loras=len(loras),
                      extra_args=["--lora-modules", *(f"{ref}={path}" for ref, path in loras.items())])
    proc = subprocess.Popen(vllm_command(start, port), env=vllm_env(start), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def stop(proc: subprocess.Popen) -> None:
    from flows.vllm_launch import stop as stop_group

    stop_group(proc)


def ask(client, model: str, messages: list[dict]) -> dict:
    """One streamed greedy chat request: {text, latency_s, ttft_s} or {error}."""
    start, first, pieces = time.perf_counter(), None, []
    try:
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                                stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
    except Exception as exc:  # noqa: BLE001 - counted as an error
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    end = time.perf_counter()
    return {"text": "".join(pieces).strip(), "latency_s": end - start, "ttft_s": (first or end) - start}


def run(url: str, refs: list[str], work: list[tuple[list[dict], str]], clients: int, tokenizer) -> dict:
    from openai import OpenAI

    jobs = [(i, refs[i % len(refs)]) for i in range(len(work))]
    results: dict[int, dict] = {}
    lock, load = threading.Lock(), os.getloadavg()[0]
    started = time.perf_counter()

    def client_loop() -> None:
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=RUN_LIMIT_S)
        while time.perf_counter() - started < RUN_LIMIT_S:
            with lock:
                if not jobs:
                    return
                i, ref = jobs.pop(0)
            results[i] = ask(client, ref, work[i][0]) | {"model": ref}

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = {i: r for i, r in results.items() if "text" in r}
    lat = sorted(r["latency_s"] for r in ok.values())
    tokens = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in ok.values())
    correct = sum(r["text"].strip().lower().rstrip(".") == work[i][1] for i, r in ok.items())
    return {"clients": clients, "requests": len(ok), "errors": len(results) - len(ok),
            "not_sent": len(work) - len(results), "wall_s": round(wall, 2), "load_1m": round(load, 2),
            "requests_per_s": round(len(ok) / wall, 3), "output_tokens_per_s": round(tokens / wall, 2),
            "p50_latency_s": round(statistics.median(lat), 3) if lat else None,
            "p95_latency_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
            "p50_ttft_s": round(statistics.median(r["ttft_s"] for r in ok.values()), 3) if ok else None,
            "accuracy": round(correct / len(ok), 3) if ok else None,
            "answers": {i: r.get("text") for i, r in sorted(results.items())},
            "first_error": next((r["error"] for r in results.values() if "error" in r), None)}


def agreement(a: dict, b: dict) -> float | None:
    shared = [i for i in a if a[i] is not None and b.get(i) is not None]
    return round(sum(a[i] == b[i] for i in shared) / len(shared), 3) if shared else None


def arm(name: str, ctx: dict, refs: list[str], work, client_counts, tokenizer) -> dict:
    logs = ctx["logs"]
    procs = []
    try:
        if name == "adaptflow":
            proc, url, log = start_adaptflow(ctx["root"], logs)
            procs.append(proc)
            startup = wait(url, proc, log)
        else:
            proc, url, log = start_vllm(ctx["base"], ctx["loras"], ctx["venv"], logs)
            procs.append(proc)
            startup = wait(url, proc, log)
            if name == "adaptflow-vllm":  # Adaptflow in front of that vLLM: the sum of both start-ups
                proc, url, log = start_adaptflow(ctx["root"], logs, url)
                procs.append(proc)
                startup += wait(url, proc, log)
        run(url, refs, work[:2], 1, tokenizer)  # warm-up: the adapters loaded, first passes paid
        runs = [run(url, refs, work, c, tokenizer) for c in client_counts]
        for r in runs:
            print(f"  {name} c{r['clients']}: {r['requests_per_s']} req/s, p50 {r['p50_latency_s']} s, "
                  f"load {r['load_1m']}, errors {r['errors']}", file=sys.stderr, flush=True)
        return {"arm": name, "startup_s": round(startup, 1), "runs": runs}
    finally:
        for p in reversed(procs):
            stop(p)


def markdown(result: dict) -> str:
    lines = ["| round | arm | clients | req/s | out tok/s | p50 s | p95 s | p50 TTFT s | accuracy | errors | load 1m |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rnd in result["rounds"]:
        for a in rnd["arms"]:
            for r in a["runs"]:
                lines.append(f"| {rnd['round']} | {a['arm']} | {r['clients']} | {r['requests_per_s']} | "
                             f"{r['output_tokens_per_s']} | {r['p50_latency_s']} | {r['p95_latency_s']} | "
                             f"{r['p50_ttft_s']} | {r['accuracy']} | {r['errors']} | {r['load_1m']} |")
    agree = "; ".join(f"round {rnd['round']}: " + ", ".join(f"{k} {v}" for k, v in rnd["agreement"].items())
                      for rnd in result["rounds"])
    return "\n".join(lines) + f"\n\nanswers equal between arms (1 client): {agree}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts, one round, 1 and 8 clients")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=None, help="the first N eval prompts (default: all 60)")
    parser.add_argument("--arms", default="adaptflow,vllm", help="adaptflow, vllm, adaptflow-vllm (comma-separated)")
    parser.add_argument("--root", type=Path, default=None, help="a registry holding --systems")
    parser.add_argument("--systems", default=None, help="two LoRA systems, e.g. triage-a@production,triage-b@v2")
    parser.add_argument("--vllm-venv", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from components.models.load import builtin_model_dir, load_tokenizer
    from components.spec import BaseModelSpec
    from flows.vllm_launch import default_venv

    rounds, limit, counts = (1, 8, (1, 8)) if args.quick else (args.rounds, args.prompts, CLIENTS)
    work = prompts(limit)
    root = args.root or Path(tempfile.mkdtemp(prefix="engines-reg-")) / "registry"
    refs = args.systems.split(",") if args.systems else register_random(root)
    ctx = {"root": root, "logs": Path(tempfile.mkdtemp(prefix="engines-logs-")), "base": builtin_model_dir(),
           "loras": adapter_dirs(root, refs), "venv": args.vllm_venv or default_venv()}
    tokenizer = load_tokenizer(BaseModelSpec())
    arms = args.arms.split(",")
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "max_tokens": MAX_TOKENS,
              "prompts": len(work), "systems": refs, "random_adapters": args.systems is None, "rounds": []}
    for n in range(1, rounds + 1):
        done = [arm(a, ctx, refs, work, counts, tokenizer) for a in arms]
        answers = {a["arm"]: a["runs"][0]["answers"] for a in done}
        pairs = {f"{x}={y}": agreement(answers[x], answers[y]) for i, x in enumerate(arms) for y in arms[i + 1:]}
        result["rounds"].append({"round": n, "arms": done, "agreement": pairs})
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    main()
