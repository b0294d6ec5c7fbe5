"""`adaptflow compare` on a knowledge spec: rag, finetune-on-docs and both, through the stages of `adaptflow run`.

    index once -> per arm (spec with knowledge.inject set): train the documents' adapter / reader, evaluate,
    register <name>--<arm> -> measure adding one changed document (re-index that file incrementally; retrain
    the adapter on the changed chunks) -> report -> register <name>--compare

Arms run one after another in this process: each trains on every core the machine gives it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from adaptflow.inject import trainee
from components.compare import knowledge as kc
from components.routing.route import route
from components.spec import TaskSpec
from components.training.reader import reader_mode
from flows import keys
from flows.keys import store
from flows.pipeline import (
    behavior_flow,
    check_gates,
    evaluation_flow,
    knowledge_flow,
    publish,
    reader_flow,
    shipped_reader,
    train_adapter,
)
from flows.stages import Indexed, Trained


def run_arm(arm: str, spec: TaskSpec, indexed: Indexed) -> tuple[str, dict]:
    """One arm through the pipeline's cached stages: (its registry ref, its report, training record and index info)."""
    decision = route(spec)
    trains = trainee(spec)
    trained = behavior_flow(trains) if decision.behavior else None
    index = indexed if decision.knowledge else None
    reader = reader_flow(spec) if decision.knowledge and reader_mode(trains) else None
    evaluated = evaluation_flow(trains, decision, trained, index, reader)
    adapter = trained or shipped_reader(evaluated, reader)
    version = publish(spec, decision, check_gates(spec, evaluated), adapter, index, evaluated, aliases=["latest"],
                      reader=reader, extra={"compare_arm": {"id": arm, "inject": spec.knowledge.inject}})
    report = evaluated.report()
    record = adapter.record() if adapter else None
    info = indexed.record() if index else None
    print(f"{arm}: {version.ref}, main arm {report['main_arm']}, {kc.SCORE} {report['metrics'].get(kc.SCORE)}")
    return version.ref, {"report": report, "record": record, "index": info}


def changed_corpus(spec: TaskSpec, folder: Path) -> tuple[TaskSpec, str]:
    """The spec over a copy of its documents with one document changed (a sentence appended): (spec, doc)."""
    source = Path(spec.knowledge.documents)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    doc = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".md", ".txt"))[0]
    doc.write_text(doc.read_text().rstrip("\n") + f"\n\n{kc.UPDATE_NOTE}\n")
    knowledge = spec.knowledge.model_copy(update={"documents": folder})
    return spec.model_copy(update={"knowledge": knowledge}), str(doc.relative_to(folder))


@task(name="update-cost", cache_policy=NONE)
def measure_updates(spec: TaskSpec, indexed: Indexed) -> dict[str, dict]:
    """Add one changed document both ways and time it: the index updated in place (vectorstore's incremental
    remove_ids + add_with_ids), and the documents' adapter retrained from the base on the changed chunks."""
    from vectorstore import build_index

    work = Path(tempfile.mkdtemp(prefix="adaptflow-update-"))
    try:
        changed, doc = changed_corpus(spec, work / "docs")
        started = time.perf_counter()
        info = build_index(changed.knowledge, work / "index", previous=indexed.index)
        reindex = {"seconds": round(time.perf_counter() - started, 2), "mode": info["update"]["mode"],
                   "counts": info["counts"],
                   "what": f"re-index {doc} ({info['update']['mode']}: {info['counts'].get('embedded', 0)} chunks "
                           f"embedded, {info['counts'].get('kept', 0)} kept; embedder already loaded)"}
        trains = trainee(changed.model_copy(update={"knowledge": changed.knowledge.model_copy(update={"inject": "finetune"})}))
        key = keys.train_key(trains)
        shutil.rmtree(store().root / "train" / key, ignore_errors=True)  # measured, never taken from the store
        started = time.perf_counter()
        trained = Trained("train", key, train_adapter.fn(trains, key), False)
        seconds = round(time.perf_counter() - started, 2)
        record = trained.record()
        retrain = {"seconds": seconds, "train_seconds": record["train_seconds"], "steps": record["steps"],
                   "what": f"retrain the documents' adapter on the changed chunks ({record['steps']} steps, "
                           f"{record['train_seconds']:.0f} s in training steps, model load included)"}
        return {"reindex": reindex, "retrain": retrain, "changed_document": doc}
    finally:
        shutil.rmtree(work, ignore_errors=True)


@task(name="register-knowledge-comparison", cache_policy=NONE)
def register_comparison(spec: TaskSpec, rows: list[kc.KnowledgeRow], update: dict, markdown: str):
    from components.models.load import resolve_model
    from components.registry import Registry, manifest_base

    staging = Path(tempfile.mkdtemp(prefix="adaptflow-compare-"))
    try:
        report = {"name": spec.name, "kind": "knowledge", "score_metric": kc.SCORE, "rows": kc.rows_json(rows),
                  "update": update}
        (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (staging / "report.md").write_text(markdown)
        metrics = {f"{kc.SCORE}@{r.arm}": r.contains_answer for r in rows if r.contains_answer is not None}
        manifest = manifest_base(spec, base_model=resolve_model(spec.base_model, verify=False), route="knowledge",
                                 reasons=["compare: rag against finetune-on-docs and both"],
                                 data_hashes=keys.data_hashes(spec), metrics=metrics,
                                 volatile={"timings": {r.arm: [r.train_seconds, r.index_seconds, r.update_seconds]
                                                       for r in rows}})
        manifest["comparison"] = {"kind": "knowledge", "arms": {r.arm: r.ref for r in rows}}
        return Registry().publish(f"{spec.name}--compare", staging, manifest, aliases=["latest"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def compare_knowledge(spec: TaskSpec) -> dict:
    """The knowledge comparison of `spec` (called by flows.compare.compare); returns what `compare` returns."""
    arms = kc.arm_specs(spec)
    print(f"compare {spec.name}: knowledge injection {', '.join(a for a, _ in arms)}")
    indexed = knowledge_flow(spec)
    measured = {}
    for arm, arm_spec in arms:
        try:
            measured[arm] = run_arm(arm, arm_spec, indexed)
        except Exception as exc:  # noqa: BLE001 - one failed arm is a row with its error, as in the method sweep
            print(f"arm {arm} failed: {type(exc).__name__}: {exc}")
            measured[arm] = exc
    update = measure_updates(spec, indexed)
    rows = []
    for arm, arm_spec in arms:
        got = measured[arm]
        if isinstance(got, Exception):
            rows.append(kc.KnowledgeRow(arm, arm_spec.knowledge.inject, None, error=f"{type(got).__name__}: {got}"))
            continue
        ref, parts = got
        rows.append(kc.knowledge_row(arm, arm_spec.knowledge.inject, ref, parts["report"], parts["record"],
                                     parts["index"], update))
    markdown = kc.render_knowledge(spec.name, rows, {k: v for k, v in update.items() if isinstance(v, dict)})
    comparison = register_comparison(spec, rows, update, markdown)
    create_markdown_artifact(markdown, key=f"compare-report-{spec.name}",
                             description=f"{spec.name}: rag against finetune-on-docs and both")
    return {"comparison": comparison.ref, "selected": None, "selection": {"reason": "a knowledge comparison selects nothing"},
            "stages": {}, "report": str(comparison.path / "report.json"), "markdown": str(comparison.path / "report.md"),
            "chart": None}
