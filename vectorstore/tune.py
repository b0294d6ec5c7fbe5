"""Chunking and top_k chosen by measurement on the user's own questions, not by our corpus.

When the evaluation rows name gold documents and the spec leaves `chunking` or `top_k` unset,
the index build tries a small grid (chunk sizes x k) and keeps the best by retrieval measures
only (no generation: seconds, not minutes). It measures on a held-out half of the questions,
chosen by a hash of the question text (stable when rows are added or reordered); the other half
is the evaluation's, which never sees this choice (components.evaluation.arms drops the held-out half).

Choice: the highest recall@k; among settings within RECALL_SLACK of it, the one that puts the
fewest tokens into the prompt (size x k), since a small model reads a short context better; then
the higher MRR. Explicit values in the spec are kept as given. Each setting also records its answer
recall (the share of questions whose gold answer string appears in the retrieved text): measured,
not chosen by, since choosing by it did not help on the lore set (docs/reading.md).
"""

from __future__ import annotations

import re
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.spec import ChunkingSpec, KnowledgeSpec
from components.spec.evalset import (
    TUNE_MIN,
    is_held_out,
    question_key,
    question_of,
    read_eval_file,
    read_eval_rows,
)

SIZES = (100, 200, 400)  # embedder tokens; overlap is a fifth of the size
TOP_KS = (2, 3, 4)
RECALL_SLACK = 0.02


def tunable(knowledge: KnowledgeSpec) -> list[str]:
    """The retrieval settings the spec leaves to measurement: 'chunking', 'top_k' (unset keys)."""
    return [k for k in ("chunking", "top_k") if k not in knowledge.model_fields_set]


def read_tune_rows(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(question, gold doc ids, acceptable answers) of every evaluation row with a question and doc_ids."""
    rows = read_eval_rows(path)
    answers = {}
    for _, row in read_eval_file(path):
        given = row.get("answer") if isinstance(row, dict) else None
        given = given if isinstance(given, list) else [] if given is None else [given]
        answers[question_of(row)] = [str(a) for a in given if str(a).strip()]
    return [(q, gold, answers.get(q, [])) for q, gold in rows]


def _words(text: str) -> str:
    """SQuAD normalization, as components.evaluation.metrics.normalize_answer (lowercase, no punctuation or articles)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " " + " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split()) + " "


def answer_recall(retriever, rows: list[tuple[str, list[str], list[str]]], k: int) -> float | None:
    """Share of the rows with answers whose answer (any acceptable one, whole words) appears in the top-k
    chunks' text; None when no row has one. (A row whose answer is the abstain phrase counts as not found
    at every setting alike.)"""
    scored = [any(_words(a) in _words(" ".join(h.text for h in retriever.search(q, k))) for a in answers)
              for q, _, answers in rows if answers]
    return sum(scored) / len(scored) if scored else None


def _choose(results: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(r["recall_at_k"] for r in results)
    close = [r for r in results if r["recall_at_k"] >= best - RECALL_SLACK]
    return min(close, key=lambda r: (r["size"] * r["k"], -r["mrr"], r["size"], r["k"]))


def tune_retrieval(knowledge: KnowledgeSpec, rows: list[tuple], embedder,
                   cache_dir: Path | None = None, *, build_index: Callable[..., Any],
                   min_questions: int = TUNE_MIN) -> tuple[KnowledgeSpec, dict[str, Any] | None]:
    """(the knowledge spec with the chosen settings, the record of the grid) — or (knowledge, None) when
    nothing is left to tune or no question has gold documents. Rows are (question, gold doc ids), or
    (question, gold doc ids, answers) as `read_tune_rows` gives them. `build_index` (vectorstore.build, which
    calls this) builds each trial index: passed in, so that neither module imports the other.

    With fewer than `min_questions` held-out questions nothing is tuned: the record is {"skipped": why, ...} (no
    `held_out`), the spec's defaults stay, and the evaluation keeps every question."""
    from vectorstore.metrics import evaluate_retrieval
    from vectorstore.retriever import Retriever

    free = tunable(knowledge)
    held = [(r[0], r[1], list(r[2]) if len(r) > 2 else []) for r in rows if is_held_out(r[0])]
    if not free or not held:
        return knowledge, None
    if len(held) < min_questions:
        return knowledge, {
            "skipped": f"{len(held)} held-out questions with doc_ids, fewer than the {min_questions} tuning needs "
                       f"(one in three of the rows with doc_ids is held out): the measured defaults (chunking "
                       f"{knowledge.chunking.size}/{knowledge.chunking.overlap}, top_k {knowledge.top_k}) are kept and every "
                       "question is evaluated",
            "questions": len(held), "minimum": min_questions, "tuned": free}
    sizes = [s for s in SIZES if s <= embedder.max_tokens] if "chunking" in free else [knowledge.chunking.size]
    chunkings = [ChunkingSpec(size=s, overlap=s // 5) for s in sizes] if "chunking" in free else [knowledge.chunking]
    ks = list(TOP_KS) if "top_k" in free else [knowledge.top_k]
    results = []
    for chunking in chunkings:
        trial = knowledge.model_copy(update={"chunking": chunking, "top_k": max(ks)})
        with tempfile.TemporaryDirectory(prefix="adaptflow-tune-") as tmp:
            build_index(trial, Path(tmp) / "index", embedder=embedder, cache_dir=cache_dir)
            retriever = Retriever.open(Path(tmp) / "index", embedder=embedder)
            for k in ks:
                m = evaluate_retrieval(retriever, [(q, gold) for q, gold, _ in held], k)
                results.append({"size": chunking.size, "overlap": chunking.overlap, "k": k,
                                "hit_at_k": m["hit_at_k"], "recall_at_k": m["recall_at_k"], "mrr": m["mrr"],
                                "answer_recall": answer_recall(retriever, held, k)})
    chosen = _choose(results)
    tuned = knowledge.model_copy(update={
        "chunking": ChunkingSpec(size=chosen["size"], overlap=chosen["overlap"]), "top_k": chosen["k"]})
    record = {
        "tuned": free, "questions": len(held), "rule": f"max recall@k, then fewest prompt tokens within {RECALL_SLACK}",
        "held_out": sorted(question_key(q) for q, _, _ in held),
        "skipped_sizes": [s for s in SIZES if s > embedder.max_tokens] if "chunking" in free else [],
        "grid": results, "chosen": {"chunking": {"size": chosen["size"], "overlap": chosen["overlap"]}, "top_k": chosen["k"]},
    }
    return tuned, record
