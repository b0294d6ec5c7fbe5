"""The `compare` flow: a spec's behavior half once per adapter variant, the report, and the choice.

    load -> expand variants -> index once (knowledge) -> per variant (parallel subflows when resources
    allow): train + eval stages in a child process, register <name>--<variant> -> report + chart
    -> register <name>--compare -> register the selected variant as <name>, with the reason

Each variant's stages are the cached stages of `adaptflow run` (same keys), so a variant trained
before is not trained again; only a variant with a missing stage starts a child process. The child
gives every variant a fresh process: its own peak RSS, its own base model, real parallelism.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from components import compare as cmp
from components.routing.route import Route
from components.spec import TaskSpec
from flows import artifacts, keys
from flows.compare_child import PROGRESS
from flows.keys import store
from flows.pipeline import check_gates, decide_route, knowledge_flow, load_task_spec, publish
from flows.stages import Evaluated, Indexed, Trained, done

LOG_TAIL = 25
REPO_ROOT = Path(__file__).resolve().parents[1]


class VariantError(RuntimeError):
    """A variant's child process failed; the message carries the tail of its log."""


@dataclass(frozen=True)
class VariantRun:
    result: cmp.VariantResult
    spec: TaskSpec
    trained: Trained
    evaluated: Evaluated


# --- one variant ---------------------------------------------------------------------------------


def _stage_keys(spec: TaskSpec, decision: Route, indexed: Indexed | None) -> tuple[str, str]:
    train_key = keys.train_key(spec)
    return train_key, keys.eval_key(spec, decision, train_key, indexed.key if indexed else None)


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


def run_child(spec: TaskSpec, stage_keys: dict[str, str | None], threads: int | None, progress=None) -> None:
    """Run the variant's missing stages in `python -m flows.compare_child JOB.json` under the parent's stage keys;
    relay progress; raise with the log tail."""
    job = {"spec": spec.model_dump(mode="json"), "keys": stage_keys}
    if pool := os.environ.get("ADAPTFLOW_COMPARE_POOL"):  # `adaptflow compare --pool`: a deployment run instead
        from flows.compare_pool import run_on_pool

        return run_on_pool(pool, job, threads)
    folder = Path(tempfile.mkdtemp(prefix=f"adaptflow-{spec.name}-"))
    (folder / "job.json").write_text(json.dumps(job, indent=2))
    log = folder / "child.log"
    cmd = [sys.executable, "-m", "flows.compare_child", str(folder / "job.json")]
    with log.open("w") as err, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                               env=_child_env(threads)) as child:
        for line in child.stdout:
            if line.startswith(PROGRESS):
                info = json.loads(line[len(PROGRESS):])
                step, total = info["step"], info["total"]
                if step == total or step % max(1, total // 10) == 0:  # the terminal sees ~10 lines per variant
                    loss = info.get("loss")
                    print(f"[{spec.name}] train step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else ""))
                if progress is not None:
                    progress(step, total, info)
            else:
                print(f"[{spec.name}] {line.rstrip()}")
    if child.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL:])
        raise VariantError(f"{spec.name}: the stage process exited with {child.returncode}; full log {log}; "
                           f"last lines:\n{tail}")
    shutil.rmtree(folder, ignore_errors=True)


@task(name="variant-stages", cache_policy=NONE)
def variant_stages(spec: TaskSpec, decision: Route, indexed: Indexed | None,
                   threads: int | None) -> tuple[Trained, Evaluated, dict[str, str]]:
    """The train and eval stages of one variant: reused when done, else run in a child process."""
    train_key, eval_key = _stage_keys(spec, decision, indexed)
    before = {"train": done("train", train_key), "eval": done("eval", eval_key)}
    if not all(before.values()):
        stage_keys = {"train": train_key, "eval": eval_key, "index": indexed.key if indexed else None}
        run_child(spec, stage_keys, threads, artifacts.Progress(f"training {spec.name}", f"train-{spec.name}"))
    trained, evaluated = done("train", train_key), done("eval", eval_key)
    if trained is None or evaluated is None:
        raise VariantError(f"{spec.name}: the stage process finished but left no train/eval output in {store().root}")
    stages = {s: "cached" if before[s] else "ran" for s in before}
    print(f"{spec.name}: train {stages['train']} ({train_key[:12]}), eval {stages['eval']} ({eval_key[:12]})")
    return trained, evaluated, stages


@flow(name="variant", flow_run_name="{variant_id}", log_prints=True)
def variant_flow(spec: TaskSpec, variant_id: str, derived: list[str], decision: Route, indexed: Indexed | None,
                 threads: int | None = None) -> VariantRun:
    """One variant: its cached stages, then its own registry entry `<name>--<variant>` (alias latest only)."""
    trained, evaluated, stages = variant_stages(spec, decision, indexed, threads)
    extra = {"compare_variant": {"id": variant_id, "derived": derived}}
    gates = check_gates(spec, evaluated)
    version = publish(spec, decision, gates, trained, indexed, evaluated, aliases=["latest"], extra=extra)
    record = trained.record()
    record.pop("loss_curve", None)
    result = cmp.VariantResult(variant_id, spec.behavior.adapter.method, version.ref, evaluated.report(), record,
                               gates.to_dict(),
                               stages, adapter=spec.behavior.adapter.model_dump(mode="json"), derived=tuple(derived))
    return VariantRun(result, spec, trained, evaluated)


@task(name="variant", cache_policy=NONE, task_run_name="{variant.id}")
def variant_task(variant: cmp.Variant, decision: Route, indexed: Indexed | None, threads: int | None) -> VariantRun:
    return variant_flow(variant.spec, variant.id, list(variant.derived), decision, indexed, threads)


def _failed(variant: cmp.Variant, exc: BaseException) -> cmp.VariantResult:
    print(f"variant {variant.id} failed: {exc}")
    return cmp.VariantResult(variant.id, variant.spec.behavior.adapter.method, error=f"{type(exc).__name__}: {exc}",
                             adapter=variant.spec.behavior.adapter.model_dump(mode="json"), derived=variant.derived)


def run_variants(variants: list[cmp.Variant], decision: Route, indexed: Indexed | None,
                 slots: int) -> list[VariantRun | cmp.VariantResult]:
    """Every variant as a subflow, `slots` at a time; a failed variant becomes a result with its error."""
    threads = max(1, (os.cpu_count() or 1) // slots) if slots > 1 else None
    with ThreadPoolTaskRunner(max_workers=slots) as runner:
        futures = [runner.submit(variant_task, {"variant": v, "decision": decision, "indexed": indexed,
                                                "threads": threads}) for v in variants]
        outcomes = [f.result(raise_on_failure=False) for f in futures]
    return [o if isinstance(o, VariantRun) else _failed(v, o) for v, o in zip(variants, outcomes, strict=True)]


# --- resources, registration, artifacts ----------------------------------------------------------


def auto_slots(spec: TaskSpec, n_variants: int) -> int:
    """Variants at once: 4 cores and ~4x the base weights in free memory (full fine-tuning) for each."""
    import psutil

    from components.models.load import resolve_model

    try:
        folder = Path(resolve_model(spec.base_model, verify=False).path)
        weights_mb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20 or 4096.0
    except (OSError, ValueError):
        weights_mb = 4096.0  # unknown size: assume a large model
    available = psutil.virtual_memory().available / 2**20
    return cmp.parallel_slots(n_variants, os.cpu_count() or 1, available, 4 * weights_mb)


@task(name="register-comparison", cache_policy=NONE)
def register_comparison(spec: TaskSpec, decision: Route, report: dict, volatile: dict):
    """Publish report.json, report.md and chart.png as `<name>--compare` (alias latest); `volatile` (this
    run's stage status and parallelism) goes in the manifest without making a new version."""
    from components.models.load import resolve_model
    from components.registry import Registry, manifest_base

    staging = Path(tempfile.mkdtemp(prefix="adaptflow-compare-"))
    try:
        cmp.write_report(report, staging)
        metric = report["score_metric"]
        scores = {f"{metric}@{r['variant']}": r["score"] for r in report["rows"] if r.get("score") is not None}
        manifest = manifest_base(spec, base_model=resolve_model(spec.base_model, verify=False), route=decision.label,
                                 reasons=decision.reasons, data_hashes=keys.data_hashes(spec), metrics=scores,
                                 volatile=volatile, volatile_files=["chart.png"])
        manifest["comparison"] = {"selection": report["selection"],
                                  "variants": {r["variant"]: r["ref"] for r in report["rows"]}}
        return Registry().publish(f"{spec.name}--compare", staging, manifest, aliases=["latest"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def register_selected(spec: TaskSpec, decision: Route, indexed: Indexed | None, run: VariantRun,
                      report: dict, comparison_ref: str):
    """The selected variant as the system version `<name>`, the reason in its manifest; gates move aliases."""
    chosen = run.spec.model_copy(update={"name": spec.name})
    selection = report["selection"] | {"variant": run.result.id, "variant_ref": run.result.ref,
                                       "comparison": comparison_ref}
    gates = check_gates(chosen, run.evaluated)
    return publish(chosen, decision, gates, run.trained, indexed, run.evaluated, extra={"selection": selection})


def publish_artifacts(report: dict, comparison, stages: dict[str, dict[str, str]]) -> None:
    name = report["name"]
    create_table_artifact(cmp.table_rows(report), key=f"compare-{name}",
                          description=f"{name}: one row per adapter variant ({comparison.ref})")
    chart = base64.b64encode((comparison.path / "chart.png").read_bytes()).decode()
    md = cmp.render_markdown(report, chart=f"data:image/png;base64,{chart}")
    md += "\n## Stages of this run\n\n" + "\n".join(
        f"- {vid}: " + ", ".join(f"{stage} {how}" for stage, how in st.items()) for vid, st in stages.items()) + "\n"
    create_markdown_artifact(md, key=f"compare-report-{name}", description=f"comparison of {name}: report and chart")


# --- the flow ------------------------------------------------------------------------------------


@flow(name="compare", log_prints=True)
def compare(spec_path: str, methods: list[str] | None = None, workspace: str | None = None,
            select: str | None = None, max_parallel: int | None = None) -> dict:
    """Train and evaluate each adapter variant, report the trade-off, register the selected one.

    Returns {"comparison": NAME--compare@vN, "selected": NAME@vN or None, "report": ..., "chart": ..., "markdown": ...}.
    """
    spec = load_task_spec(spec_path, workspace)
    if cmp.knowledge_comparison(spec) and not methods:  # documents, no behavior: rag against finetune-on-docs
        from flows.compare_knowledge import compare_knowledge

        return compare_knowledge(spec)
    variants = cmp.expand_variants(spec, methods)
    rule = cmp.check_select_rule(select or (spec.compare.select if spec.compare else "best_score"))
    decision = decide_route(spec)
    indexed = knowledge_flow(spec) if decision.knowledge else None
    slots = max_parallel or auto_slots(spec, len(variants))
    print(f"compare {spec.name}: {', '.join(v.id for v in variants)}; {slots} at a time; select {rule}")
    runs = run_variants(variants, decision, indexed, slots)
    results = [r.result if isinstance(r, VariantRun) else r for r in runs]
    gates = spec.evaluation.gates if spec.evaluation else {}
    report = cmp.build_report(spec.name, results, rule, gates)
    stages = {r.id: r.stages for r in results if r.stages}
    comparison = register_comparison(spec, decision, report, {"stages": stages, "parallel": slots})
    chosen = next((r for r in runs if isinstance(r, VariantRun) and r.result.id == report["selection"]["chosen"]), None)
    selected = register_selected(spec, decision, indexed, chosen, report, comparison.ref) if chosen else None
    publish_artifacts(report, comparison, stages)
    print(f"selected: {selected.ref if selected else 'none'} — {report['selection']['reason']}")
    return {"comparison": comparison.ref, "selected": selected.ref if selected else None,
            "selection": report["selection"], "stages": stages, "report": str(comparison.path / "report.json"),
            "markdown": str(comparison.path / "report.md"), "chart": str(comparison.path / "chart.png")}
