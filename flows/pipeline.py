"""The main flow: load and validate -> route -> train adapter / build index -> evaluate -> check gates -> publish.

Each stage's output is stored under a key that hashes its resolved inputs (flows.keys) and comes back
typed (flows.stages), so an unchanged spec re-runs nothing, a documents-only change re-indexes without
retraining, and a killed training run resumes from its last checkpoint. Every stage is a subflow whose
one task computes what the store lacks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from adaptflow.inject import trainee
from components.evaluation.gates import GateResult, evaluate_gates
from components.registry import Registry, Version, manifest_base
from components.registry.lineage import base_model_record
from components.routing.route import Route, route
from components.spec import TaskSpec
from components.spec.load import load_spec
from components.training.reader import reader_mode
from flows import artifacts, keys
from flows.keys import store
from flows.names import spec_run_name
from flows.stages import Evaluated, Indexed, StageResult, Trained, run_stage
from vectorstore.persist import split_volatile


@task(name="load-spec", cache_policy=NONE)
def load_task_spec(spec_path: str, workspace: str | None = None) -> TaskSpec:
    from adaptflow.preflight import check_before_run

    spec = load_spec(spec_path, workspace)
    check_before_run(spec, spec_path)  # eval rows, documents, gold doc ids, registry writable: before any model loads
    return spec


@task(name="route", cache_policy=NONE)
def decide_route(spec: TaskSpec) -> Route:
    decision = route(spec)
    print(f"route: {decision.label} — " + "; ".join(decision.reasons))
    return decision


@task(name="probe-route", cache_policy=NONE)
def probe_route(spec: TaskSpec, indexed: Indexed | None, key: str) -> Path:
    """The base model on a sample of the evaluation set, without context, with retrieval and with gold context."""
    from adaptflow.system import System
    from components.evaluation.arms import load_eval_items
    from components.routing.probe import measure, sample

    system = System(f"{spec.name}@probe", spec, None, indexed.index if indexed else None)
    evidence = measure(system, spec, sample(load_eval_items(spec)))
    work = store().work("probe", key)
    (work / "probe.json").write_text(json.dumps(evidence.to_dict(), indent=2, sort_keys=True) + "\n")
    return store().commit("probe", key, {"probe": evidence.to_dict()})


def measured_route(spec: TaskSpec) -> tuple[Route, Indexed | None, dict | None]:
    """`goal: auto` with an evaluation set: build the index first (it is what retrieval is probed with), probe
    (cached like every stage), decide. Otherwise the declared route. Returns (route, index stage, evidence)."""
    from components.routing.probe import Evidence, decide

    if not keys.wants_probe(spec):
        return decide_route(spec), None, None
    indexed = knowledge_flow(spec) if spec.knowledge else None
    key = keys.probe_key(spec)
    probed = run_stage("probe", key, probe_route, spec, indexed, key)
    data = probed.report()
    decision = decide(spec, Evidence(data["items"], data["strict_metric"], data["arms"]))
    print(f"route: {decision.label} (measured{', cached' if probed.cached else ''}) — " + "; ".join(decision.reasons))
    return decision, indexed, data


@task(name="train-adapter", cache_policy=NONE)
def train_adapter(spec: TaskSpec, key: str, progress=None) -> Path:
    """Train the spec's adapter into the stage store under `key`: components.training.recipe.train_task in this process,
    or on `training.distributed.processes` processes through `accelerate launch` (components.training.distributed),
    followed here. `progress` defaults to the UI's progress artifact; `compare`'s child process calls `.fn`
    with its own, without Prefect."""
    from components.training import distributed
    from components.training.recipe import train_task

    progress = progress or artifacts.Progress("training", f"train-{spec.name}")
    work = store().work("train", key)
    if distributed.wanted(spec):
        record = distributed.launch(spec, work, progress=progress)
    else:
        record = train_task(spec, work, progress=progress).to_dict()
    return store().commit("train", key, {"record": record}, keep=("adapter", "train_record.json"))


@task(name="reader", cache_policy=NONE)
def reader_adapter(spec: TaskSpec, key: str, progress=None) -> Path:
    """The reading adapter under `key`: the builtin one trained here, or a registered one's adapter copied."""
    from components.training.reader import copy_shipped, registered_reader, shipped_record, train_reader

    work = store().work("reader", key)
    mode = reader_mode(spec)
    shipped = shipped_record(spec) if mode == "builtin" else None
    if shipped is not None:  # the built-in base's reader ships in the wheel: a first knowledge run trains nothing
        record = copy_shipped(shipped, work)
        (work / "train_record.json").write_text(json.dumps(record, indent=2))
    elif mode == "builtin":
        progress = progress or artifacts.Progress("reader training", f"reader-{spec.name}")
        record = train_reader(spec, work, progress=progress).to_dict()
    else:
        version = registered_reader(spec, mode)
        shutil.rmtree(work / "adapter", ignore_errors=True)
        shutil.copytree(version.path / "adapter", work / "adapter")
        record = {"from": version.ref}
        kept = work / "adapter" / "train_record.json"
        kept.rename(work / "train_record.json") if kept.exists() else (work / "train_record.json").write_text("{}")
    return store().commit("reader", key, {"record": record}, keep=("adapter", "train_record.json"))


@task(name="build-index", cache_policy=NONE)
def build_knowledge_index(spec: TaskSpec, key: str) -> Path:
    from vectorstore import build_index

    previous = store().pointer("index", spec.name)
    work = store().work("index", key)
    shutil.rmtree(work / "index", ignore_errors=True)
    info = build_index(spec.knowledge, work / "index", previous=previous / "index" if previous else None,
                       progress=artifacts.StageProgress("embedding", f"index-{spec.name}"), tune_rows=keys.tune_rows(spec))
    done = store().commit("index", key, {"index": info})
    store().set_pointer("index", spec.name, key)
    return done


@flow(name="behavior", log_prints=True)
def behavior_flow(spec: TaskSpec) -> Trained:
    key = keys.train_key(spec)
    return run_stage("train", key, train_adapter, spec, key)


@flow(name="knowledge", log_prints=True)
def knowledge_flow(spec: TaskSpec) -> Indexed:
    key = keys.index_key(spec)
    return run_stage("index", key, build_knowledge_index, spec, key)


@flow(name="reader", log_prints=True)
def reader_flow(spec: TaskSpec) -> Trained:
    """The knowledge spec's reading adapter: trained once per base model, then found by every spec."""
    key = keys.reader_key(spec)
    return run_stage("reader", key, reader_adapter, spec, key)


@task(name="evaluate", cache_policy=NONE)
def evaluate_arms(spec: TaskSpec, decision: Route, trained: Trained | None, indexed: Indexed | None,
                  key: str, reader: Trained | None = None) -> Path:
    """Evaluate the candidate's arms into the stage store under `key` (`compare`'s child calls `.fn`)."""
    from adaptflow.system import System
    from components.evaluation.arms import arms_for, evaluate
    from components.training.reader import chosen_reader_decides

    adapting = trained or reader  # a knowledge spec's reader is its adapter
    system = System(f"{spec.name}@candidate", spec, adapting.adapter if adapting else None,
                    indexed.index if indexed else None)
    work = store().work("eval", key)
    report = evaluate(system, spec, arms_for(decision.behavior, decision.knowledge, reader=reader is not None),
                      work / "eval", adapting.record() if adapting else None,
                      progress=artifacts.EvalProgress("evaluation", f"eval-progress-{spec.name}"),
                      reader_decides=chosen_reader_decides(spec))
    return store().commit("eval", key, {"timings": report["timings"]})


@flow(name="evaluation", log_prints=True)
def evaluation_flow(spec: TaskSpec, decision: Route, trained: Trained | None, indexed: Indexed | None,
                    reader: Trained | None = None) -> Evaluated:
    key = keys.eval_key(spec, decision, trained and trained.key, indexed and indexed.key, reader and reader.key)
    return run_stage("eval", key, evaluate_arms, spec, decision, trained, indexed, key, reader)


def shipped_reader(evaluated: Evaluated, reader: Trained | None) -> Trained | None:
    """The reader when the evaluation's main arm reads with it (auto keeps it only where it helped)."""
    if reader is None:
        return None
    return reader if evaluated.report()["main_arm"].startswith("reader") else None


# How a run went, not what it made: wall times, memory, whether it resumed. They go to the manifest's
# volatile section, so two runs of the same inputs register one version (components.registry.files).
VOLATILE_TRAIN_KEYS = ("wall_seconds", "train_seconds", "tokens_per_second", "peak_rss_mb", "resumed_from_step")


def _machine_facts(manifest: dict) -> dict:
    """Where this machine keeps the base model and which checkout ran: lineage, not content."""
    facts = {"base_model_path": manifest["base_model"].pop("path", None)}
    if "reader_model" in manifest:  # knowledge.reader_model: where its weights live here, as for the base
        facts["reader_model_path"] = manifest["reader_model"].pop("path", None)
    for key in ("git_commit", "git_dirty"):
        facts[key] = manifest.pop(key, None)
    return facts


@task(name="check-gates", cache_policy=NONE)
def check_gates(spec: TaskSpec, evaluated: Evaluated) -> GateResult:
    """The spec's gates on the evaluation's metrics: all must pass for `publish` to move an alias beyond latest."""
    return evaluate_gates(spec.evaluation.gates if spec.evaluation else {}, evaluated.report()["metrics"])


def _stage_folder(trained: Trained | None, indexed: Indexed | None, evaluated: Evaluated, staging: Path) -> dict:
    """Copy the stages' outputs into `staging` as a registry version lays them out; returns their volatile facts."""
    volatile: dict = {"eval": evaluated.record()}
    if trained:
        shutil.copytree(trained.adapter, staging / "adapter")
        record = trained.record()
        volatile["train"] = {k: record.pop(k) for k in VOLATILE_TRAIN_KEYS if k in record}
        (staging / "adapter" / "train_record.json").write_text(json.dumps(record, indent=2))
    if indexed:
        shutil.copytree(indexed.index, staging / "index")
        volatile["index"] = split_volatile(indexed.record())[1]
    shutil.copytree(evaluated.folder, staging / "eval")
    return volatile


@task(name="publish", cache_policy=NONE)
def publish(spec: TaskSpec, decision: Route, gates: GateResult, trained: Trained | None, indexed: Indexed | None,
            evaluated: Evaluated, aliases: list[str] | None = None, extra: dict | None = None,
            reader: Trained | None = None, probe_key: str | None = None) -> Version:
    """Register the stages' outputs as `spec.name`; `aliases` default to latest + promote_to (the registry moves
    them only as far as `gates` allow), `extra` joins the manifest. `probe_key`: the measured route's probe stage
    (goal: auto), recorded with the other stage keys."""
    from components.models.load import resolve_model

    staging = Path(tempfile.mkdtemp(prefix="adaptflow-stage-"))
    try:
        volatile = _stage_folder(trained, indexed, evaluated, staging)
        manifest = manifest_base(
            spec, base_model=resolve_model(spec.base_model, verify=False), route=decision.label,
            reasons=decision.reasons, data_hashes=keys.data_hashes(spec), metrics=evaluated.report()["metrics"],
            gates=gates,
        )
        if spec.knowledge is not None and spec.knowledge.reader_model is not None:  # the model that wrote the answers
            manifest["reader_model"] = base_model_record(resolve_model(spec.knowledge.reader_model, verify=False))
        manifest["volatile"] = volatile | _machine_facts(manifest)
        manifest["stage_keys"] = {s.stage: s.key for s in (trained, indexed, reader, evaluated) if s} | (
            {"probe": probe_key} if probe_key else {})
        manifest |= extra or {}
        aliases = aliases or ["latest", spec.evaluation.promote_to if spec.evaluation else "production"]
        return Registry().publish(spec.name, staging, manifest, aliases=aliases)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@flow(name="adapt", flow_run_name=spec_run_name, log_prints=True)
def adapt(spec_path: str, workspace: str | None = None, processes: int | None = None) -> str:
    """Turn a spec into an evaluated, registered system; returns NAME@vN. `processes` overrides
    `training.distributed.processes` (training on several processes through accelerate)."""
    from components.training.distributed import with_processes

    spec = with_processes(load_task_spec(spec_path, workspace), processes)
    decision, prebuilt_index, evidence = measured_route(spec)
    progress = artifacts.start_run_progress(
        spec.name, [s for s, on in (("train", decision.behavior), ("index", decision.knowledge), ("eval", True)) if on])
    trains = trainee(spec)  # knowledge.inject finetune/both: the documents as the adapter's data (adaptflow.inject)
    try:
        trained = _noted(progress, behavior_flow(trains)) if decision.behavior else None
        indexed = _noted(progress, prebuilt_index or knowledge_flow(spec)) if decision.knowledge else None
        reader = reader_flow(spec) if decision.knowledge and reader_mode(trains) else None
        evaluated = _noted(progress, evaluation_flow(trains, decision, trained, indexed, reader))
    finally:
        artifacts.end_run_progress()
    gates = check_gates(spec, evaluated)
    version = publish(spec, decision, gates, trained or shipped_reader(evaluated, reader), indexed, evaluated,
                      reader=reader, extra={"route_probe": evidence} if evidence else None,
                      probe_key=keys.probe_key(spec) if evidence else None)  # the key measured_route ran
    stages = [s for s in (trained, indexed, reader, evaluated) if s]
    artifacts.publish_run_summary(spec, decision, version, gates, evaluated.report(), stages)
    line = result_line(version, gates)
    progress.done(line)
    print(line)  # the last line of the run's logs, in the UI as in the terminal
    return version.ref


def _noted(progress: artifacts.RunProgress, result: StageResult) -> StageResult:
    progress.finished(result.stage, "reused (inputs unchanged)" if result.cached else "done")
    return result


def result_line(version, gates) -> str:
    """'registered NAME@v3 (new version); gates passed; moved latest, production'."""
    what = "new version" if version.created else "identical content was already registered: nothing new"
    if not gates.passed:
        verdict = "gates FAILED (" + "; ".join(r["reason"] or r["metric"] for r in gates.failed) + "); no alias moved"
    else:
        moved = ", ".join(version.moved_aliases)
        verdict = "gates passed; " + (f"moved {moved} to v{version.number}" if moved else "no alias moved")
    return f"result: {version.ref} ({what}); {verdict}"
