"""Concurrent questions are embedded in one call, and each caller gets exactly its own vector."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from components.serving.embedding import BatchingEmbedder

pytestmark = pytest.mark.usefixtures("one_thread")


class Recording:
    """A real embedder (a tiny sentence-transformers model) that records the batches it was given."""

    def __init__(self, folder):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu")
        self.calls: list[int] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.model.encode(texts, normalize_embeddings=True)


def test_concurrent_questions_share_one_encode_call(tiny_embedder_dir):
    inner = Recording(tiny_embedder_dir)
    questions = [f"question number {i} about the harbor" for i in range(8)]
    alone = {q: inner.encode([q])[0] for q in questions}
    inner.calls.clear()
    batcher = BatchingEmbedder(inner, window_s=0.05)
    got: dict[str, np.ndarray] = {}
    start = threading.Barrier(len(questions))

    def ask(q: str) -> None:
        start.wait()
        got[q] = batcher.encode([q])[0]

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    [t.start() for t in threads]
    [t.join(timeout=60) for t in threads]
    assert sorted(got) == sorted(questions)
    assert all(np.allclose(got[q], alone[q], atol=1e-5) for q in questions)  # nobody got another's vector
    assert sum(inner.calls) == 8 and max(inner.calls) > 1 and len(inner.calls) < 8, inner.calls
    assert batcher.encode(["a", "b"]).shape[0] == 2  # lists pass straight through


def test_a_bad_question_fails_alone(tiny_embedder_dir):
    batcher = BatchingEmbedder(Recording(tiny_embedder_dir), window_s=0.05)
    outcomes: list = []
    start = threading.Barrier(3)

    def ask(text) -> None:
        start.wait()
        try:
            outcomes.append(batcher.encode([text]))
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=ask, args=(t,)) for t in ("fine", {"not": "text"}, "also fine")]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    assert len(outcomes) == 3 and sum(isinstance(o, Exception) for o in outcomes) == 1, outcomes
    assert batcher.encode(["fine"]).shape[0] == 1  # and the next call works
