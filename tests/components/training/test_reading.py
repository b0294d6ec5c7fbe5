"""The gold-context ceiling, the retrieval and reading losses, and abstention, on a tiny model and index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptflow.system import System
from components.evaluation.arms import (
    GOLD,
    arm_parts,
    ceiling_of,
    document_texts,
    evaluate,
    gold_contexts,
    load_eval_items,
    main_arm,
    score_arm,
)
from components.evaluation.metrics import abstained, contains_answer, is_abstention
from components.models.prompting import ABSTAIN_PHRASE, CONTEXT_INSTRUCTION, with_context
from components.spec import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = {
    "harbor.md": "# Harbor\n\nThe Pellin harbor opened in 1871 and has nine piers. Its light is red.\n\n"
                 "Ferries leave the harbor at seven every morning for the island of Holm, a crossing of forty minutes.\n",
    "mill.md": "# Mill\n\nThe Copper mill ground wheat until 1952, when a flood broke its wheel.\n",
    "choir.md": "# Choir\n\nRuth Adeyemi founded the Saltmarsh choir in 1994. It sings on Sundays.\n",
}
QA = [
    {"question": "When did the Pellin harbor open?", "answer": "1871", "doc_ids": ["harbor.md"]},
    {"question": "Who founded the Saltmarsh choir?", "answer": "Ruth Adeyemi", "doc_ids": ["choir"]},
    {"question": "What broke the mill's wheel?", "answer": "a flood", "doc_ids": ["mill.md"]},
    {"question": "Who is the mayor of Pellin?", "answer": ABSTAIN_PHRASE},
]


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory, tiny_llama_dir, tiny_embedder_dir) -> tuple[TaskSpec, Path]:
    from vectorstore import build_index

    root = tmp_path_factory.mktemp("reading")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA))
    spec = TaskSpec.model_validate({
        "name": "tiny-reading", "goal": "knowledge", "base_model": {"id": str(tiny_llama_dir)},
        "knowledge": {"documents": str(root / "docs"), "chunking": {"size": 16, "overlap": 4},
                      "embedder": str(tiny_embedder_dir), "top_k": 1},
        "evaluation": {"data": str(root / "qa.jsonl"), "max_new_tokens": 4},
    })
    build_index(spec.knowledge, root / "index", cache_dir=root / "cache")
    return spec, root / "index"


@pytest.fixture(scope="module")
def system(knowledge) -> System:
    spec, index = knowledge
    return System("tiny-reading@candidate", spec, None, index)


def test_gold_documents_are_rebuilt_whole_from_overlapping_chunks(system):
    """Oracle: the document text itself (chunks of 16 tokens overlapping by 4 cover it without gaps)."""
    assert len(system.retriever.rows) > len(DOCS)  # the documents were split, so the merge is exercised
    docs = document_texts(system.retriever)
    for doc_id, text in DOCS.items():
        title, merged = docs[doc_id]
        assert " ".join(merged.split()) in " ".join(text.split()) and len(merged) >= 0.8 * len(text.strip())
        assert "nine piers" not in merged or doc_id == "harbor.md"


def test_gold_context_arm_scores_rows_with_gold_documents_with_their_text(system, knowledge):
    spec, _ = knowledge
    items = load_eval_items(spec)
    gold = gold_contexts(items, system.retriever)
    assert [len(g) for g in gold] == [1, 1, 1, 0]  # "choir" resolves by stem; the unanswerable row has none
    assert "Ruth Adeyemi founded" in gold[1][0][1]
    metrics, rows = score_arm(system, items, GOLD, None, gold=gold)
    assert len(rows) == 3 and all(r["has_gold"] for r in rows)
    assert metrics["contains_answer"] == sum(contains_answer(r["prediction"], r["answer"]) for r in rows) / 3
    assert "abstain" not in metrics and "hit_at_k" not in metrics


def test_unanswerable_rows_are_scored_by_abstain_only(system, knowledge):
    spec, _ = knowledge
    items = load_eval_items(spec)
    assert [i.unanswerable for i in items] == [False, False, False, True]
    metrics, rows = score_arm(system, items, "base+retrieval", None)
    assert set(rows[3]) >= {"abstain", "prediction"} and "contains_answer" not in rows[3]
    assert metrics["abstain"] == abstained(rows[3]["prediction"])
    assert metrics["contains_answer"] == sum(r["contains_answer"] for r in rows[:3]) / 3
    assert metrics["hit_at_k"] <= 1.0


def test_report_has_the_ceiling_and_the_losses_add_up(system, knowledge, tmp_path):
    spec, _ = knowledge
    report = evaluate(system, spec, ["base", "base+retrieval"], tmp_path)
    assert list(report["arms"]) == ["base", "base+retrieval", GOLD]
    assert report["main_arm"] == "base+retrieval" and report["unanswerable"] == 1
    retrieved, ceiling = report["arms"]["base+retrieval"], report["arms"][GOLD]
    c = report["ceiling"]["arms"]["base+retrieval"]
    assert c["ceiling"] == round(ceiling["contains_answer"], 4)
    assert retrieved["retrieval_loss"] == pytest.approx(c["ceiling"] - c["score"], abs=1e-4)
    assert retrieved["reading_loss"] == pytest.approx(1 - c["ceiling"], abs=1e-4)
    assert retrieved["retrieval_loss"] + retrieved["reading_loss"] == pytest.approx(1 - c["score"], abs=1e-3)
    assert report["metrics"]["retrieval_loss"] == retrieved["retrieval_loss"]  # gateable
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ceiling"] == report["ceiling"]
    md = (tmp_path / "report.md").read_text()
    assert "gold-context ceiling" in md and "| base+retrieval |" in md and "1 unanswerable" in md


def test_arm_names_and_main_arm_choice():
    assert arm_parts("reader+retrieval") == (True, "retrieval")
    assert arm_parts("adapter+gold-context") == (True, "gold")
    assert arm_parts(GOLD) == (False, "gold") and arm_parts("base") == (False, "none")
    assert ceiling_of("base+retrieval") == GOLD and ceiling_of("reader+retrieval") == "reader+gold-context"
    arms = ["base", "base+retrieval", "reader+retrieval", GOLD, "reader+gold-context"]
    assert main_arm(arms) == "reader+retrieval"
    assert main_arm(arms, {"by": "held-out", "reader": True}) == "reader+retrieval"
    assert main_arm(arms, {"by": "rule", "reader": False}) == "base+retrieval"
    assert main_arm(["base", "base+retrieval", GOLD], {"by": "rule", "reader": False}) == "base+retrieval"


def test_the_prompt_and_the_metric_share_the_abstain_phrase():
    assert ABSTAIN_PHRASE in CONTEXT_INSTRUCTION
    prompt = with_context([{"role": "user", "content": "q?"}], [("T", "text")])[0]["content"]
    assert f"reply: {ABSTAIN_PHRASE}." in prompt
    assert abstained("Not in the documents.") == 1.0 and abstained("It is not in the document") == 0.0
    assert abstained("1871") == 0.0 and is_abstention("Not in the documents") and not is_abstention("1871")


def test_ui_and_terminal_tables_show_each_arms_losses(system, knowledge, tmp_path):
    from flows.summary import arm_rows, arm_table

    spec, _ = knowledge
    report = evaluate(system, spec, ["base", "base+retrieval"], tmp_path)
    rows = {r["arm"]: r for r in arm_rows(report)}  # the Prefect table artifact's rows
    assert rows["base+retrieval"]["retrieval_loss"] == round(report["arms"]["base+retrieval"]["retrieval_loss"], 4)
    assert rows["base"]["retrieval_loss"] is None and "abstain" in rows["base"]
    header = arm_table(report)[0].split()
    assert {"abstain", "retrieval_loss", "reading_loss"} <= set(header)


def test_every_score_carries_its_bootstrap_interval_in_report_terminal_and_ui(system, knowledge, tmp_path):
    from components.evaluation.metrics import bootstrap_interval
    from flows.summary import arm_rows, arm_table

    spec, _ = knowledge
    report = evaluate(system, spec, ["base", "base+retrieval"], tmp_path)
    for arm in report["arms"]:
        for metric in ("contains_answer", "exact_match"):
            if metric in report["arms"][arm]:
                low, high = report["intervals"][arm][metric]
                assert low <= report["arms"][arm][metric] <= high
    # the interval is the bootstrap of the arm's own per-row scores (the rows report.json does not keep)
    _, rows = score_arm(system, load_eval_items(spec), "base+retrieval", None)
    assert report["intervals"]["base+retrieval"]["contains_answer"] == list(
        bootstrap_interval([r["contains_answer"] for r in rows if "contains_answer" in r]))
    assert report["intervals"]["base+retrieval"]["hit_at_k"][1] <= 1.0
    ui = {r["arm"]: r for r in arm_rows(report)}
    assert ui["base+retrieval"]["contains_answer 95% CI"].count("-") == 1
    assert "[" in arm_table(report)[2] and "95 % interval" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["intervals"] == report["intervals"]


def test_reader_choice_without_a_tuning_split_follows_the_measured_rule(system, knowledge):
    from components.evaluation.arms import READER_RULE, reader_choice

    spec, _ = knowledge
    choice = reader_choice(system, load_eval_items(spec), None)
    assert choice["by"] == "rule" and choice["reader"] is READER_RULE and "no tuning split" in choice["why"]
