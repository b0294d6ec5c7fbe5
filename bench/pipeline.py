"""Pipeline costs: an unchanged spec's second run vs its first, and Prefect's share of a run's wall time.

    .venv/bin/python -m bench.pipeline [--rerun-spec specs/lore-assistant.yaml] [--overhead-spec specs/lore-knowledge.yaml]

rerun_wall_ratio: `adapt(spec)` twice on a fresh stage store and registry; the second run must
reuse every stage and register nothing new. prefect_overhead: the same knowledge spec run (a) by
the flow and (b) by calling the same components directly (build_index, System + evaluate,
Registry.publish), each on a fresh stage store and registry, with the embedding cache warmed
first so neither pays for embedding; overhead = (flow - direct) / flow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fresh(tmp: Path, tag: str) -> None:
    os.environ["ADAPTFLOW_STAGES"] = str(tmp / f"stages-{tag}")
    os.environ["ADAPTFLOW_REGISTRY"] = str(tmp / f"registry-{tag}")


def rerun(spec_path: str, tmp: Path) -> dict:
    from flows.pipeline import adapt

    _fresh(tmp, "rerun")
    start = time.perf_counter()
    first_ref = adapt(spec_path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    second_ref = adapt(spec_path)
    second = time.perf_counter() - start
    assert first_ref == second_ref, (first_ref, second_ref)
    return {"rerun_wall_ratio": round(second / first, 4), "first_run_s": round(first, 1),
            "second_run_s": round(second, 1)} | query_latency(first_ref)


def query_latency(ref: str) -> dict:
    """p50/p95 query latency of the registered system's main arm, split into retrieval and generation
    (measured by the evaluation on its first eval questions, one query at a time)."""
    from components.registry import Registry

    version = Registry().open(ref)
    report = json.loads((version.path / "eval" / "report.json").read_text())
    eff = version.manifest.get("volatile", {}).get("eval", {})  # timings live outside the digested files
    keys = [f"{part}_{q}_ms" for part in ("latency", "retrieval", "generation") for q in ("p50", "p95")]
    return {"query_arm": report["main_arm"]} | {f"query_{k}": eff[k] for k in keys if k in eff}


def direct(spec_path: str, tmp: Path) -> float:
    """The knowledge pipeline without Prefect: the same component calls the flow's tasks make."""
    from adaptflow.system import System
    from components.evaluation.arms import arms_for, evaluate
    from components.evaluation.gates import evaluate_gates
    from components.models.load import resolve_model
    from components.registry import Registry, manifest_base
    from components.routing.route import route
    from components.spec.load import load_spec
    from flows.keys import data_hashes
    from vectorstore import build_index

    start = time.perf_counter()
    spec = load_spec(spec_path)
    decision = route(spec)
    out = tmp / "direct"
    build_index(spec.knowledge, out / "index")
    system = System(f"{spec.name}@candidate", spec, None, out / "index")
    report = evaluate(system, spec, arms_for(decision.behavior, decision.knowledge), out / "eval")
    gates = evaluate_gates(spec.evaluation.gates if spec.evaluation else {}, report["metrics"])
    manifest = manifest_base(
        spec, base_model=resolve_model(spec.base_model, verify=False), route=decision.label,
        reasons=decision.reasons, data_hashes=data_hashes(spec), metrics=report["metrics"], gates=gates,
        volatile={"eval": report.get("timings", {})},
    )
    aliases = ["latest", spec.evaluation.promote_to if spec.evaluation else "production"]
    Registry(tmp / "registry-direct").publish(spec.name, out, manifest, aliases=aliases)
    return time.perf_counter() - start


def overhead(spec_path: str, tmp: Path) -> dict:
    from components.spec.load import load_spec
    from flows.pipeline import adapt
    from vectorstore import build_index

    build_index(load_spec(spec_path).knowledge, tmp / "warm")  # warm the embedding cache for both runs
    shutil.rmtree(tmp / "warm")
    direct_s = direct(spec_path, tmp)
    _fresh(tmp, "overhead")
    start = time.perf_counter()
    adapt(spec_path)
    flow_s = time.perf_counter() - start
    return {"prefect_overhead": round(max(0.0, flow_s - direct_s) / flow_s, 4), "flow_s": round(flow_s, 1),
            "direct_s": round(direct_s, 1)}


def run(rerun_spec: str = "specs/lore-assistant.yaml", overhead_spec: str = "specs/lore-knowledge.yaml",
        parts: tuple[str, ...] = ("rerun", "overhead")) -> dict:
    os.chdir(REPO)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        if "rerun" in parts:
            out |= rerun(rerun_spec, Path(tmp))
            print("partial " + json.dumps(out), flush=True)  # kept in the log if the second part fails
        if "overhead" in parts:
            out |= overhead(overhead_spec, Path(tmp))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rerun-spec", default="specs/lore-assistant.yaml")
    parser.add_argument("--overhead-spec", default="specs/lore-knowledge.yaml")
    parser.add_argument("--parts", default="rerun,overhead")
    args = parser.parse_args()
    print(json.dumps(run(args.rerun_spec, args.overhead_spec, tuple(args.parts.split(","))), indent=2))
