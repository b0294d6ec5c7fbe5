"""Fixtures for the vectorstore tests: a tiny random sentence-transformers embedder and small corpora."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any faiss import (see vectorstore/__init__.py)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_embedder(tiny_embedder_dir):
    from vectorstore import load_embedder

    return load_embedder(str(tiny_embedder_dir))


@pytest.fixture(scope="session")
def other_embedder(tmp_path_factory):
    """Same architecture and tokenizer, different random weights."""
    from tests.conftest import make_tiny_embedder_dir
    from vectorstore import load_embedder

    return load_embedder(str(make_tiny_embedder_dir(tmp_path_factory.mktemp("other-embedder"), seed=1)))


TOPICS = ["harbor", "lighthouse", "orchard", "railway", "observatory", "brewery", "library", "mine", "ferry", "mill"]


def write_corpus(folder: Path, n_docs: int = 10, paragraphs: int = 4) -> Path:
    """Markdown documents with a title and several paragraphs of distinct sentences each."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        topic = TOPICS[d % len(TOPICS)]
        paras = [
            " ".join(f"The {topic} number {d} record {p}-{s} mentions {topic}{d * 7 + p + s} and value {d * 100 + p * 10 + s}."
                     for s in range(5))
            for p in range(paragraphs)
        ]
        (folder / f"{topic}-{d}.md").write_text(f"# The {topic} {d}\n\n" + "\n\n".join(paras) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def make_corpus():
    """write_corpus(folder, n_docs=10, paragraphs=4) -> folder."""
    return write_corpus
