"""compare_parallel_speedup: `adaptflow compare` of 2 variants, 2 at a time / one after another.

    ADAPTFLOW_BENCH_STEPS=12 nice -n 5 .venv/bin/python -m bench.compare_parallel

The triage example (specs/support-triage.yaml, the built-in 135M model) with `--methods lora,ia3`,
training cut to ADAPTFLOW_BENCH_STEPS steps (default 12; the spec's 2 epochs are 60 steps, ~3 min per
variant on an idle 2-core host) so that the bench fits a session. Both runs start from an empty stage
store and registry (nothing cached), share one Prefect API started before timing, and use 1 torch
thread per variant process: `--parallel 1` runs the two variants' child processes one after another,
`--parallel 2` runs both at once (flows/compare.py gives each cores // 2 = 1 thread). The two
comparison tables (score and trainable parameters per variant) must be the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def workspace(root: Path, steps: int) -> Path:
    """The triage spec and its data, with `max_steps: steps`."""
    shutil.copytree(REPO / "specs" / "data" / "triage", root / "data" / "triage",
                    ignore=shutil.ignore_patterns("*.py"))
    text = (REPO / "specs" / "support-triage.yaml").read_text()
    text = text.replace("training: {epochs: 2,", f"training: {{epochs: 2, max_steps: {steps},")
    assert f"max_steps: {steps}" in text, "specs/support-triage.yaml changed shape: update bench/compare_parallel.py"
    (root / "spec.yaml").write_text(text)
    return root / "spec.yaml"


def compare(spec: Path, parallel: int, out: Path, env: dict[str, str]) -> tuple[float, list[tuple]]:
    env = env | {"ADAPTFLOW_STAGES": str(out / "stages"), "ADAPTFLOW_REGISTRY": str(out / "registry")}
    cmd = [sys.executable, "-m", "flows.cli", "compare", str(spec), "--methods", "lora,ia3",
           "--parallel", str(parallel), "--workspace", str(spec.parent)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=spec.parent, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode not in (0, 3):  # 3: a gate failed (few steps): the table is still the result
        raise RuntimeError(f"compare --parallel {parallel} exited {done.returncode}: {done.stderr[-3000:]}")
    report = json.loads((out / "registry" / "support-triage--compare" / "v1" / "report.json").read_text())
    table = sorted((r["variant"], r.get("score"), r.get("trainable_params")) for r in report["rows"])
    return took, table


def run() -> dict:
    from flows import server

    steps = int(os.environ.get("ADAPTFLOW_BENCH_STEPS", "12"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = workspace(root / "ws", steps)
        proc, port = server.temporary_server(root / "server.log")
        try:
            env = {**os.environ, "PREFECT_API_URL": server.api_url(port), "PYTHONPATH": str(REPO),
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            load_before = os.getloadavg()[0]
            seq, seq_table = compare(spec, 1, root / "seq", env)
            par, par_table = compare(spec, 2, root / "par", env)
            load_after = os.getloadavg()[0]
        finally:
            server.stop_process(proc)
    return {"compare_parallel_speedup": round(seq / par, 2), "sequential_s": round(seq, 1), "parallel_2_s": round(par, 1),
            "same_table": seq_table == par_table, "table": seq_table, "max_steps": steps, "methods": "lora,ia3",
            "workers": 2, "threads_per_worker": 1, "cores": os.cpu_count(),
            "load_average_1m": [round(load_before, 1), round(load_after, 1)]}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
