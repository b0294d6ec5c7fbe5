"""Retrieval scored against gold document ids: a retriever run over the evaluation questions.

The evaluation file's parser, the gold-id rule and the metrics themselves live in the floor module
`components.spec.evalset`, shared with the evaluation and `adaptflow validate`; they are re-exported here.
"""

from __future__ import annotations

from typing import Any

from components.spec.evalset import id_spellings, read_eval_rows, resolve_gold_ids, retrieval_metrics

__all__ = ["evaluate_retrieval", "id_spellings", "read_eval_rows", "resolve_gold_ids", "retrieval_metrics"]


def evaluate_retrieval(retriever: Any, rows: list[tuple[str, list[str]]], k: int) -> dict[str, Any]:
    """Run each question through `retriever.search` and score the documents it returns; gold ids are
    first resolved against the index's own document ids (an unknown one stays, and never matches)."""
    corpus = sorted({row["doc_id"] for row in retriever.rows.values()})
    golds = [sum(resolve_gold_ids(gold, corpus), []) for _, gold in rows]
    retrieved = [[hit.doc_id for hit in retriever.search(q, k)] for q, _ in rows]
    return retrieval_metrics(retrieved, golds, k)
