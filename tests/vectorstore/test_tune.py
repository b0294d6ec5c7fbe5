"""Index-time tuning of unset chunking / top_k on a held-out third of the questions (at least TUNE_MIN)."""

from __future__ import annotations

import json

import pytest

from components.spec import KnowledgeSpec
from tests.vectorstore.conftest import TOPICS, write_corpus
from vectorstore import Retriever, build_index, evaluate_retrieval
from vectorstore.tune import SIZES, TOP_KS, is_held_out, question_key, read_tune_rows, tunable, tune_retrieval

N_DOCS = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("tune") / "docs", n_docs=N_DOCS, paragraphs=4)


def rows() -> list[tuple[str, list[str]]]:
    """Two questions per document, naming a value from one of its paragraphs."""
    out = []
    for d in range(N_DOCS):
        topic = TOPICS[d % len(TOPICS)]
        for p in (0, 3):
            out.append((f"Which {topic} record mentions {topic}{d * 7 + p + 2}?", [f"{topic}-{d}.md"]))
    return out


def answered_rows() -> list[tuple[str, list[str], list[str]]]:
    """rows() with their answers: the value each question names appears in its paragraph."""
    return [(q, gold, [q.split("mentions ")[1].rstrip("?")]) for q, gold in rows()]


def knowledge(corpus, embedder_dir, **extra) -> KnowledgeSpec:
    return KnowledgeSpec.model_validate({"documents": str(corpus), "embedder": str(embedder_dir), **extra})


def test_split_is_stable_and_about_a_third():
    questions = [q for q, _ in rows()] + [f"question number {n}?" for n in range(200)]
    held = [q for q in questions if is_held_out(q)]
    assert 0.25 < len(held) / len(questions) < 0.42  # the evaluation keeps at least two thirds
    assert all(is_held_out(q) == is_held_out(q) for q in questions)
    assert is_held_out("What is  it?") == is_held_out("What is it?")  # whitespace does not move a question


def test_only_unset_settings_are_tuned(corpus, tiny_embedder_dir):
    assert tunable(knowledge(corpus, tiny_embedder_dir)) == ["chunking", "top_k"]
    assert tunable(knowledge(corpus, tiny_embedder_dir, top_k=4)) == ["chunking"]
    given = knowledge(corpus, tiny_embedder_dir, chunking={"size": 64, "overlap": 8}, top_k=3)
    assert tunable(given) == []


def test_grid_scores_equal_plain_builds_and_the_choice_follows_the_rule(corpus, tiny_embedder, tiny_embedder_dir,
                                                                       tmp_path):
    spec = knowledge(corpus, tiny_embedder_dir)
    tuned, record = tune_retrieval(spec, rows(), tiny_embedder, tmp_path / "cache", build_index=build_index, min_questions=1)
    held = [(q, g) for q, g in rows() if is_held_out(q)]
    sizes = [s for s in SIZES if s <= tiny_embedder.max_tokens]
    assert [(g["size"], g["k"]) for g in record["grid"]] == [(s, k) for s in sizes for k in TOP_KS]
    assert record["questions"] == len(held) and record["held_out"] == sorted(question_key(q) for q, _ in held)
    for g in record["grid"]:  # oracle: an ordinary build with these settings, measured the ordinary way
        plain = knowledge(corpus, tiny_embedder_dir, chunking={"size": g["size"], "overlap": g["overlap"]}, top_k=g["k"])
        folder = tmp_path / f"plain-{g['size']}-{g['k']}"
        build_index(plain, folder, embedder=tiny_embedder, cache_dir=tmp_path / "cache")
        m = evaluate_retrieval(Retriever.open(folder, embedder=tiny_embedder), held, g["k"])
        assert (g["hit_at_k"], g["recall_at_k"], g["mrr"]) == (m["hit_at_k"], m["recall_at_k"], m["mrr"])
    best = max(g["recall_at_k"] for g in record["grid"])
    close = [g for g in record["grid"] if g["recall_at_k"] >= best - 0.02]
    cheapest = min(g["size"] * g["k"] for g in close)
    chosen = record["chosen"]
    assert chosen["chunking"]["size"] * chosen["top_k"] == cheapest
    assert (tuned.chunking.size, tuned.top_k) == (chosen["chunking"]["size"], chosen["top_k"])


def test_explicit_values_are_kept_and_the_index_records_the_choice(corpus, tiny_embedder, tiny_embedder_dir,
                                                                  tmp_path):
    spec = knowledge(corpus, tiny_embedder_dir, chunking={"size": 64, "overlap": 8})
    info = build_index(spec, tmp_path / "index", embedder=tiny_embedder, cache_dir=tmp_path / "cache",
                       tune_rows=rows(), tune_min=1)
    assert info["tuning"]["tuned"] == ["top_k"] and {g["size"] for g in info["tuning"]["grid"]} == {64}
    assert info["chunking"]["size"] == 64 and info["retrieval"]["top_k"] == info["tuning"]["chosen"]["top_k"]
    saved = json.loads((tmp_path / "index" / "index.json").read_text())
    assert saved["tuning"]["chosen"] == info["tuning"]["chosen"]
    fixed = knowledge(corpus, tiny_embedder_dir, chunking={"size": 64, "overlap": 8}, top_k=2)
    assert "tuning" not in build_index(fixed, tmp_path / "fixed", embedder=tiny_embedder,
                                       cache_dir=tmp_path / "cache", tune_rows=rows(), tune_min=1)


def test_evaluation_leaves_the_held_out_half_out(corpus, tiny_embedder, tiny_embedder_dir, tmp_path):
    from components.evaluation.arms import EvalItem, evaluation_half

    build_index(knowledge(corpus, tiny_embedder_dir), tmp_path / "index", embedder=tiny_embedder,
                cache_dir=tmp_path / "cache", tune_rows=rows(), tune_min=1)
    retriever = Retriever.open(tmp_path / "index", embedder=tiny_embedder)
    items = [EvalItem([{"role": "user", "content": q}], q, "x", g) for q, g in rows()]
    kept, left_out = evaluation_half(items, retriever)
    assert left_out == sum(is_held_out(q) for q, _ in rows()) > 0
    assert [i.query for i in kept] == [q for q, _ in rows() if not is_held_out(q)]


def test_the_grid_records_answer_recall(corpus, tiny_embedder, tiny_embedder_dir, tmp_path):
    from components.evaluation.metrics import contains_answer

    tuned, record = tune_retrieval(knowledge(corpus, tiny_embedder_dir), answered_rows(), tiny_embedder, tmp_path / "c",
                                   build_index=build_index, min_questions=1)
    held = [r for r in answered_rows() if is_held_out(r[0])]
    assert record["rule"].startswith("max recall@k")
    for g in record["grid"]:  # oracle: the answer string searched for in a plain build's top-k text
        plain = knowledge(corpus, tiny_embedder_dir, chunking={"size": g["size"], "overlap": g["overlap"]}, top_k=g["k"])
        folder = tmp_path / f"plain-{g['size']}-{g['k']}"
        build_index(plain, folder, embedder=tiny_embedder, cache_dir=tmp_path / "c")
        retriever = Retriever.open(folder, embedder=tiny_embedder)
        found = [contains_answer(" ".join(h.text for h in retriever.search(q, g["k"])), answers) for q, _, answers in held]
        assert g["answer_recall"] == sum(found) / len(found)
    _, plain_record = tune_retrieval(knowledge(corpus, tiny_embedder_dir), rows(), tiny_embedder, tmp_path / "c", build_index=build_index, min_questions=1)
    assert record["chosen"] == plain_record["chosen"]  # recorded, not chosen by
    assert all(g["answer_recall"] is None for g in plain_record["grid"])  # no answers, nothing to record


def test_tune_rows_carry_the_answers(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "How long is it?", "answer": ["3 km", "3 kilometres"], "doc_ids": ["a.md"]},
        {"question": "Who made it?", "answer": "not in the documents", "doc_ids": ["a.md"]},
        {"question": "No gold?", "answer": "x"},
        {"messages": [{"role": "user", "content": "When?"}], "answer": 1871, "doc_ids": ["b.md"]},
    ]) + "\n")
    assert read_tune_rows(path) == [("How long is it?", ["a.md"], ["3 km", "3 kilometres"]),
                                    ("Who made it?", ["a.md"], ["not in the documents"]), ("When?", ["b.md"], ["1871"])]


def test_below_the_minimum_nothing_is_tuned_and_every_question_is_evaluated(corpus, tiny_embedder, tiny_embedder_dir,
                                                                           tmp_path):
    from components.evaluation.arms import EvalItem, evaluation_half
    from components.spec.evalset import TUNE_MIN

    held = sum(is_held_out(q) for q, _ in rows())
    assert 0 < held < TUNE_MIN
    spec = knowledge(corpus, tiny_embedder_dir)
    same, record = tune_retrieval(spec, rows(), tiny_embedder, tmp_path / "c", build_index=build_index)
    assert same == spec and "held_out" not in record and record["questions"] == held
    assert f"fewer than the {TUNE_MIN}" in record["skipped"] and "every question is evaluated" in record["skipped"]
    info = build_index(spec, tmp_path / "index", embedder=tiny_embedder, cache_dir=tmp_path / "c", tune_rows=rows())
    assert "tuning" not in info and info["tuning_skipped"]["minimum"] == TUNE_MIN
    assert info["retrieval"]["top_k"] == spec.top_k and info["chunking"]["size"] == spec.chunking.size
    items = [EvalItem([{"role": "user", "content": q}], q, "x", g) for q, g in rows()]
    kept, left_out = evaluation_half(items, Retriever.open(tmp_path / "index", embedder=tiny_embedder))
    assert left_out == 0 and len(kept) == len(items)
