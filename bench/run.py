"""`make bench`: run every benchmark in its own process, print a table, write bench/results.json.

    .venv/bin/python -m bench.run [--only train_speed,faiss_bench,...]

Every figure is a ratio against a baseline measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"
BENCHES = ["cached_load", "faiss_bench", "adapter_swap", "qlora_memory", "train_speed", "pipeline", "s3_publish", "embed_dask",
           "serve_load", "ddp", "compare_parallel", "prompt_decode"]
GOALS = {
    "train_tokens_per_s_ratio": (">=", 1.5), "qlora_weight_memory_ratio": ("<=", 0.35),
    "qlora_peak_rss_ratio": ("<=", 0.7), "cached_load_speedup": (">=", 10), "rerun_wall_ratio": ("<=", 0.05),
    "prefect_overhead": ("<=", 0.10), "faiss_qps_ratio": (">=", 10), "faiss_recall_at_10": (">=", 0.95),
    "adapter_swap_speedup": (">=", 50), "embed_dask_speedup": (">=", 1.6), "compare_parallel_speedup": (">=", 1.6), "serve_throughput_ratio": (">=", 3),
    "wrong_adapter_answers": ("<=", 0), "rss_growth_pct": ("<=", 10),
    "ddp_equivalence": ("<=", 1e-5),
}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def run_one(name: str) -> dict:
    code = f"import json, bench.{name} as b; print('RESULT ' + json.dumps(b.run()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(line.removeprefix("RESULT "))


def verdict(key: str, value) -> str:
    if key not in GOALS or not isinstance(value, int | float):
        return ""
    op, goal = GOALS[key]
    ok = value >= goal if op == ">=" else value <= goal
    return f"{'met' if ok else 'MISSED'} ({op} {goal})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(BENCHES))
    names = parser.parse_args().only.split(",")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = machine()
    for name in names:
        start = time.perf_counter()
        print(f"== {name} ...", flush=True)
        results[name] = run_one(name) | {"bench_seconds": round(time.perf_counter() - start, 1)}
        RESULTS.write_text(json.dumps(results, indent=2))
    print("\n| benchmark | key | value | goal |\n|---|---|---|---|")
    for name in BENCHES:
        for key, value in results.get(name, {}).items():
            print(f"| {name} | {key} | {value if key != 'error' else 'ERROR'} | {verdict(key, value)} |")
    print(f"\nwritten {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
