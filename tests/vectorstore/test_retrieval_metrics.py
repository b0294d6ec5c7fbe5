"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from vectorstore import retrieval_metrics


def test_metrics_hand_computed():
    retrieved = [["a", "b", "c"], ["x", "a", "a"], ["x", "y", "z"], ["q"]]
    gold = [["a"], ["a", "b"], ["a"], []]
    m = retrieval_metrics(retrieved, gold, k=3)
    assert m["queries"] == 3 and m["skipped"] == 1
    assert m["hit_at_k"] == pytest.approx(round(2 / 3, 4))
    assert m["recall_at_k"] == pytest.approx(round((1 + 0.5 + 0) / 3, 4))
    assert m["mrr"] == pytest.approx(round((1 + 0.5 + 0) / 3, 4))
    ndcg2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))  # gold a at rank 2 (second "a" not credited)
    assert m["ndcg"] == pytest.approx(round((1 + ndcg2) / 3, 4))


def test_metrics_cut_at_k_and_length_mismatch():
    assert retrieval_metrics([["x", "a"]], [["a"]], k=1)["hit_at_k"] == 0.0
    with pytest.raises(ValueError, match="one per query"):
        retrieval_metrics([["a"]], [], k=1)
