"""Two workers racing on one stage key and one registry name, as two real processes (no locks shared in memory).

Each process runs the pipeline's stage runner on the same stage key (the compute writes its pid and
sleeps, to hold the race window open), then publishes the stage's output to the same registry name.
Both start at once, after both have imported everything. The stage must be computed once and reused
by the other (the key's file lock, then the done marker); the registry must hold one verified
version that both got (identical content is deduplicated under the registry's lock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from components.registry import Registry

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import json, os, sys, time
from pathlib import Path
from components.registry import Registry
from flows.keys import store
from flows.stages import run_stage
ready, go = Path(sys.argv[1]), Path(sys.argv[2])

def compute():
    work = store().work("train", "k" * 64)
    (work / "adapter.bin").write_bytes(b"weights from a worker")  # the same inputs make the same output
    (work / "who.txt").write_text(str(os.getpid()))
    time.sleep(1.0)  # the other worker arrives while this one computes
    return store().commit("train", "k" * 64, {"by": os.getpid()})

ready.touch()
while not go.exists():
    time.sleep(0.002)
result = run_stage("train", "k" * 64, compute)
version = Registry().publish("raced", result.path, {"metrics": {"f1": 0.5}, "volatile": {"by": os.getpid()}},
                             aliases=["latest"])
print(json.dumps({"cached": result.cached, "path": str(result.path), "who": (result.path / "who.txt").read_text(),
                  "version": version.number}))
"""


def test_two_processes_race_on_one_stage_key_and_one_registry_name(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ADAPTFLOW_STAGES": str(tmp_path / "stages"),
           "ADAPTFLOW_REGISTRY": str(tmp_path / "registry"), "PREFECT_API_URL": ""}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"ready-{i}"), str(go)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        go.touch()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(o["cached"] for o in outs) == [False, True]  # computed once, reused once
    assert outs[0]["path"] == outs[1]["path"] and outs[0]["who"] == outs[1]["who"]
    computed_by = next(o for o in outs if not o["cached"])
    assert computed_by["who"] in {str(p.pid) for p in procs}
    stage_dir = tmp_path / "stages" / "train"
    assert sorted(p.name for p in stage_dir.iterdir() if not p.name.endswith(".lock")) == ["k" * 64]  # no stray .work
    assert [o["version"] for o in outs] == [1, 1]
    registry = Registry(tmp_path / "registry")
    (version,) = registry.versions("raced")
    registry.verify(version)
    assert registry.aliases("raced") == {"latest": 1}
    assert not [p.name for p in (tmp_path / "registry" / "raced").iterdir() if p.name.startswith(".tmp-")]
