"""`knowledge.inject: finetune | both`: the documents trained into an adapter, on tiny models, through the real flow.

The chunks the adapter trains on are the index's chunks; the registered adapter loads with vanilla peft; the
evaluation scores the trained adapter on the same questions (with forgetting); user QA pairs are prompted as the
evaluation prompts; the strict spec refuses what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.registry import Registry
from components.spec import TaskSpec
from components.spec.load import SpecError, load_spec

pytestmark = pytest.mark.integration


def knowledge_spec(path: Path, inject: str, finetune: str = "", name: str | None = None) -> Path:
    """The tiny `both` workspace's spec without its behavior section, injecting its documents with `inject`."""
    lines = path.read_text().splitlines()
    start = lines.index("behavior:")
    kept = lines[:start] + lines[start + 4:]
    text = "\n".join(kept) + "\n"
    text = text.replace("goal: both", "goal: knowledge").replace("name: tiny-both", f"name: {name or 'tiny-' + inject}")
    ft = finetune or ("  finetune: {adapter: {method: lora, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}, "
                      "training: {max_steps: 4, batch_size: 4, lr: 5.0e-2, max_seq_len: 64}}")
    text = text.replace("  top_k: 2\n", f"  top_k: 2\n  inject: {inject}\n{ft}\n")
    path.write_text(text)
    return path


def test_default_is_rag_and_the_strict_spec_refuses_what_cannot_work(tmp_path):
    base = {"name": "t", "goal": "knowledge", "knowledge": {"documents": "docs/"}, "evaluation": {"data": "qa.jsonl"}}
    spec = TaskSpec.model_validate(base, context={"check_exists": False})
    assert spec.knowledge.inject == "rag"
    # every linear layer but the output head, resolved per architecture by peft (q/k/v/o/gate/up/down_proj on Llama)
    assert spec.knowledge.finetune.adapter.r == 64 and spec.knowledge.finetune.adapter.target_modules == "all-linear"

    both = {**base, "goal": "both", "behavior": {"data": {"train": "t.jsonl"}},
            "knowledge": {"documents": "docs/", "inject": "finetune"}}
    with pytest.raises(ValueError, match="one system carries one adapter; use inject: rag"):
        TaskSpec.model_validate(both, context={"check_exists": False})
    no_eval = {**base, "knowledge": {"documents": "docs/", "inject": "both"}, "evaluation": None}
    with pytest.raises(ValueError, match="evaluation.data is missing"):
        TaskSpec.model_validate(no_eval, context={"check_exists": False})
    on_eval = {**base, "knowledge": {"documents": "docs/", "inject": "finetune", "finetune": {"data": "qa.jsonl"}}}
    with pytest.raises(ValueError, match="knowledge.finetune.data is the evaluation set"):
        TaskSpec.model_validate(on_eval, context={"check_exists": False, "base_dir": tmp_path})

    (tmp_path / "spec.yaml").write_text("name: t\nknowledge: {documents: docs/, inject: retrain}\n")
    (tmp_path / "docs").mkdir()
    with pytest.raises(SpecError, match="inject"):
        load_spec(tmp_path / "spec.yaml", tmp_path)


def test_chunk_rows_are_the_index_chunks(make_workspace, isolated):
    from adaptflow.inject import chunk_rows, trainee
    from vectorstore import build_index
    from vectorstore.docstore import read_docstore

    spec = load_spec(knowledge_spec(make_workspace(goal="both"), "finetune"), isolated)
    build_index(spec.knowledge, isolated / "index")
    indexed = sorted(r["text"] for r in read_docstore(isolated / "index" / "docstore.jsonl").values())
    rows = chunk_rows(spec)
    assert sorted(r["completion"] for r in rows) == indexed
    assert rows[0]["prompt"].startswith("What do the documents say in 'Harbor'") or "part 1" in rows[0]["prompt"]

    trains = trainee(spec)  # the behavior section the train stage sees: every chunk trains, none is held out
    assert trains.behavior.data.format == "completion" and trains.behavior.data.eval_split == 0
    assert trains.behavior.adapter == spec.knowledge.finetune.adapter
    assert [json.loads(line) for line in Path(trains.behavior.data.train).read_text().splitlines()] == \
        [dict(sorted(r.items())) for r in rows]
    assert trainee(spec).behavior.data.train == trains.behavior.data.train  # content-addressed: written once


def test_finetune_trains_the_documents_evaluates_and_registers_a_vanilla_peft_adapter(prefect_api, make_workspace, isolated):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptflow import load_system
    from flows.pipeline import adapt

    spec_path = knowledge_spec(make_workspace(goal="both"), "finetune")
    ref = adapt(str(spec_path))
    version = Registry().open(ref)
    assert (version.path / "adapter").is_dir() and not (version.path / "index").exists()
    assert version.manifest["route"]["decision"] == "behavior"
    assert "knowledge.inject is 'finetune'" in version.manifest["route"]["reasons"][0]
    assert version.manifest["spec"]["knowledge"]["inject"] == "finetune" and version.manifest["spec"]["behavior"] is None
    report = json.loads((version.path / "eval" / "report.json").read_text())
    assert set(report["arms"]) == {"base", "adapter"} and report["main_arm"] == "adapter"
    assert "forgetting" in report["metrics"] and "contains_answer" in report["metrics"]
    record = json.loads((version.path / "adapter" / "train_record.json").read_text())
    assert record["steps"] == 4

    base = AutoModelForCausalLM.from_pretrained(version.manifest["volatile"]["base_model_path"])
    peft = PeftModel.from_pretrained(base, version.path / "adapter")  # vanilla peft
    assert peft.peft_config["default"].r == 4

    system = load_system(ref)  # a knowledge spec with a trained adapter and no index
    assert system.method == "lora" and system.retriever is None
    assert isinstance(system.query("When did the Pellin harbor open?").answer, str)
    assert adapt(str(spec_path)) == ref  # unchanged: nothing new


def test_both_trains_and_indexes_and_pairs_are_prompted_as_the_evaluation(prefect_api, make_workspace, isolated):
    from adaptflow.inject import pair_rows
    from components.evaluation.arms import load_eval_items
    from flows.pipeline import adapt

    root = make_workspace(goal="both")
    pairs = [{"question": "When did the Pellin harbor open?", "answer": ["1871", "in 1871"]},
             {"question": "Who founded the Saltmarsh choir?", "answer": "Ruth Adeyemi"}]
    (isolated / "data" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    ft = ("  finetune: {data: data/pairs.jsonl, adapter: {method: lora, r: 4, target_modules: [q_proj, v_proj]}, "
          "training: {max_steps: 4, batch_size: 2, lr: 5.0e-2, max_seq_len: 64}}")
    spec_path = knowledge_spec(root, "both", ft)
    spec = load_spec(spec_path, isolated)
    rows = pair_rows(spec.knowledge.finetune.data)
    asked = {tuple(m["content"] for m in i.messages) for i in load_eval_items(spec)}
    assert all(tuple(m["content"] for m in r["messages"][:-1]) in asked for r in rows)
    assert [r["messages"][-1]["content"] for r in rows] == ["1871", "Ruth Adeyemi"]

    version = Registry().open(adapt(str(spec_path)))
    assert (version.path / "adapter").is_dir() and (version.path / "index").is_dir()
    report = json.loads((version.path / "eval" / "report.json").read_text())
    assert {"adapter", "adapter+retrieval", "base+retrieval"} <= set(report["arms"])
    assert version.manifest["route"]["decision"] == "both"
    assert "knowledge.finetune.data" in version.manifest["data_hashes"]


def test_compare_on_a_knowledge_spec_measures_rag_against_finetune_on_docs(prefect_api, make_workspace, isolated):
    from components.compare.knowledge import UPDATE_NOTE
    from flows.compare import compare

    spec_path = knowledge_spec(make_workspace(goal="both"), "rag", name="tiny-lore")
    out = compare(str(spec_path))
    report = json.loads(Path(out["report"]).read_text())
    rows = {r["arm"]: r for r in report["rows"]}
    assert list(rows) == ["rag", "finetune-on-docs", "both"] and not any(r["error"] for r in rows.values())
    assert rows["rag"]["main_arm"] == "base+retrieval" and rows["rag"]["train_seconds"] is None  # no reader on a tiny base
    assert rows["finetune-on-docs"]["main_arm"] == "adapter" and rows["finetune-on-docs"]["forgetting"] is not None
    assert rows["both"]["main_arm"] in ("adapter+retrieval", "base+retrieval")
    assert all(rows[a]["contains_answer"] is not None for a in rows)
    # adding one changed document, measured both ways: the index updated in place, the adapter retrained
    update = report["update"]
    assert update["reindex"]["mode"] == "incremental" and update["reindex"]["counts"]["kept"] > 0
    assert update["retrain"]["steps"] == 4 and update["retrain"]["seconds"] > 0
    assert rows["both"]["update_seconds"] == round(update["reindex"]["seconds"] + update["retrain"]["seconds"], 2)
    registry = Registry()
    for arm, row in rows.items():
        version = registry.open(row["ref"])
        assert version.manifest["spec"]["knowledge"]["inject"] == {"rag": "rag", "finetune-on-docs": "finetune",
                                                                    "both": "both"}[arm]
        assert (version.path / "adapter").is_dir() == (arm != "rag")
    assert UPDATE_NOTE not in (isolated / "data" / "docs" / "choir.md").read_text()  # the user's documents untouched
    assert "| finetune-on-docs | finetune | adapter |" in Path(out["markdown"]).read_text()
