"""The built-in server under issue 29's workload, profiled, an older source tree against this one in one run.

    .venv/bin/python -m bench.serve_profile --registry DIR [--baseline TREE] [--rounds 2] [--profile OUT]

DIR holds `support-triage` (a LoRA system: `adaptflow run specs/support-triage.yaml`) and `lore-knowledge`
(an index, no adapter: `adaptflow run specs/lore-knowledge.yaml`). A real `adaptflow serve` subprocess on loopback
serves them; with `--baseline TREE` (a copy of the repository before a change, e.g. `git archive REF | tar -x -C
TREE`) the same script starts that tree's server too, A B A B, one server up at a time, the same venv.

- c1: triage evaluation prompts (the spec's system prompt + ticket) one at a time, greedy, `max_tokens` 32,
  streamed (time to first token = first content chunk); c8: 8 client threads over the next prompts. No prompt is
  sent twice to one server (warm-up included): a repeated prompt would skip its prefill (the prefix store).
- knowledge: the chat page's request (`stream`, `max_tokens` 128, retrieval on) for lore questions, one at a time:
  time to first token and the whole answer.
- answers: each server's greedy answers, their accuracy on the triage labels, and how many differ between trees.
- `--profile OUT`: py-spy (`record --native --format raw`) on the server during the c1 and c8 phases of the
  first round; OUT gets the raw stacks and `profile.json`: the top frames by own samples and the share of
  samples under each of the engine's steps (bench.profile_frames).
The load average is printed with every phase: on a shared machine compare ratios inside one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.profile_frames import summarize  # noqa: E402

TRIAGE, KNOWLEDGE = "support-triage@latest", "lore-knowledge@latest"
NEW_TOKENS, CHAT_TOKENS, CLIENTS, WARM = 32, 128, 8, 8


def prompts(n: int) -> list[tuple[list[dict], str]]:
    rows = [json.loads(line) for line in (REPO / "specs/data/triage/qa.jsonl").read_text().splitlines()]
    return [(r["messages"], r["answer"]) for r in rows[:n]]


def questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (REPO / "specs/data/lore/qa.jsonl").read_text().splitlines()]
    return [r["question"] for r in rows[:n]]


def start(tree: Path, registry: Path, log: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"ADAPTFLOW_REGISTRY": str(registry), "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)] + (
        ["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    raise TimeoutError(log.read_text()[-3000:])


def ask(url: str, model: str, messages: list[dict], max_tokens: int, retrieval: bool) -> dict:
    """One streamed chat request: {text, tokens, latency_s, ttft_s} or {error}."""
    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "adaptflow": {"retrieval": retrieval}}
    start, first, pieces, tokens = time.perf_counter(), None, [], 0
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.read()[:200]!r}"}
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if content:
                    first = first or time.perf_counter()
                    pieces.append(content)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 - counted as an error
        return {"error": f"{type(exc).__name__}: {exc}"}
    end = time.perf_counter()
    return {"text": "".join(pieces).strip(), "tokens": tokens, "latency_s": end - start,
            "ttft_s": (first or end) - start}


def phase(url: str, jobs: list[tuple[list[dict], str]], clients: int) -> tuple[list[dict], float]:
    """The triage jobs over `clients` threads; results in job order and the wall time."""
    results: list = [None] * len(jobs)
    cursor = iter(range(len(jobs)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            results[i] = ask(url, TRIAGE, jobs[i][0], NEW_TOKENS, False)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 3)


def stats(results: list[dict], wall: float, labels: list[str] | None = None) -> dict:
    ok = [r for r in results if "error" not in r]
    out = {"requests": len(results), "errors": len(results) - len(ok), "req_per_s": round(len(ok) / wall, 3),
           "p50_s": pct([r["latency_s"] for r in ok], 0.5), "p95_s": pct([r["latency_s"] for r in ok], 0.95),
           "ttft_p50_s": pct([r["ttft_s"] for r in ok], 0.5), "ttft_p95_s": pct([r["ttft_s"] for r in ok], 0.95),
           "tokens_per_request": round(statistics.mean(r["tokens"] for r in ok), 1) if ok else None,
           "load_1m": round(os.getloadavg()[0], 2)}
    if labels is not None:
        hits = sum(r.get("text", "").strip().lower() == label for r, label in zip(results, labels, strict=True))
        out["accuracy"] = round(hits / len(results), 3)
    return out


class Spy:
    """py-spy on the server for the length of a `with` block (raw collapsed stacks)."""

    def __init__(self, pid: int, out: Path | None):
        self.pid, self.out, self.proc = pid, out, None

    def __enter__(self):
        if self.out is not None:
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--native",
                                          "--format", "raw", "--rate", "50", "--pid", str(self.pid), "-o",
                                          str(self.out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the first request
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)


def one_server(tree: Path, args, spy_dir: Path | None, tag: str, work: Path) -> dict:
    every = prompts(WARM + args.c1_prompts + args.prompts)  # no prompt twice: a repeated one skips its prefill
    warm, c1_jobs, jobs = every[-WARM:], every[:args.c1_prompts], every[args.c1_prompts:-WARM]
    labels = [label for _, label in jobs]
    proc, url = start(tree, args.registry, work / f"serve-{tag}.log", args.threads)
    try:
        ask(url, TRIAGE, warm[0][0], NEW_TOKENS, False)  # warm-up: both systems loaded, first passes run
        knowledge = (args.registry / KNOWLEDGE.split("@")[0]).exists()
        if knowledge:
            ask(url, KNOWLEDGE, [{"role": "user", "content": questions(1)[0]}], CHAT_TOKENS, True)
        phase(url, warm, CLIENTS)
        out: dict = {}
        with Spy(proc.pid, spy_dir / f"{tag}-c1.txt" if spy_dir else None):
            results, wall = phase(url, c1_jobs, 1)
        out["c1"] = stats(results, wall, [label for _, label in c1_jobs])
        answers = [r.get("text") for r in results]
        with Spy(proc.pid, spy_dir / f"{tag}-c8.txt" if spy_dir else None):
            results, wall = phase(url, jobs, CLIENTS)
        out["c8"] = stats(results, wall, labels)
        out["answers"] = [r.get("text") for r in results]
        out["c1_answers"] = answers
        chats, start_t = [], time.perf_counter()
        for q in questions(args.questions + 1)[1:] if knowledge else []:
            chats.append(ask(url, KNOWLEDGE, [{"role": "user", "content": q}], CHAT_TOKENS, True))
        out["knowledge"] = stats(chats, time.perf_counter() - start_t) if chats else {}
        out["knowledge_answers"] = [r.get("text") for r in chats]
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def ratio(after: float | None, before: float | None) -> float | None:
    return round(after / before, 2) if after and before else None


def ratios(a: dict, b: dict) -> dict:
    return {key: ratio(a.get(key), b.get(key)) for key in ("req_per_s", "p50_s", "p95_s", "ttft_p50_s")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, help="a source tree to compare with (the server before a change)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=48, help="triage prompts in the c8 phase")
    parser.add_argument("--c1-prompts", type=int, default=16)
    parser.add_argument("--questions", type=int, default=8, help="knowledge questions for the chat TTFT")
    parser.add_argument("--threads", type=int, help="`adaptflow serve --threads` (default: the server's own)")
    parser.add_argument("--profile", type=Path, help="write py-spy profiles of the first round here")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    args.registry = args.registry.resolve()
    trees = ([("before", args.baseline.resolve())] if args.baseline else []) + [("after", REPO)]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-profile-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, tree in trees:
            spy = args.profile if (args.profile and r == 0) else None
            result = one_server(tree, args, spy, name, work)
            runs[name].append(result)
            print(json.dumps({"round": r + 1, "tree": name} | {k: result[k] for k in ("c1", "c8", "knowledge")}),
                  flush=True)
    report: dict = {"runs": runs}
    if args.baseline:
        report["ratios_after_over_before"] = [
            {phase_: ratios(a[phase_], b[phase_]) for phase_ in ("c1", "c8", "knowledge")}
            for a, b in zip(runs["after"], runs["before"], strict=True)]
        a, b = runs["after"][0], runs["before"][0]
        report["answers_differing"] = {
            "c8": sum(x != y for x, y in zip(a["answers"], b["answers"], strict=True)),
            "c1": sum(x != y for x, y in zip(a["c1_answers"], b["c1_answers"], strict=True)),
            "knowledge": sum(x != y for x, y in zip(a["knowledge_answers"], b["knowledge_answers"], strict=True))}
    if args.profile:
        report["profiles"] = {f.stem: summarize(f) for f in sorted(args.profile.glob("*-c*.txt"))}
        (args.profile / "profile.json").write_text(json.dumps(report["profiles"], indent=2))
    text = json.dumps({k: v for k, v in report.items() if k != "runs"} | {
        "summary": {n: [{p: x[p] for p in ("c1", "c8", "knowledge")} for x in rs] for n, rs in runs.items()}}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
