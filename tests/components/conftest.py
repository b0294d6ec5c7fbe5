"""Fixtures shared by the adapter-method tests (methods, registry, hybrids, inspection, composition, precision):
an untied tiny Llama saved as a model folder, and a tiny yes/no chat data set, with or without a system message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_tiny_llama


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer) -> Path:
    """An untied tiny Llama: its greedy output moves as soon as an adapter changes the hidden states."""
    folder = tmp_path_factory.mktemp("tiny-untied")
    make_tiny_llama(tokenizer, tie_word_embeddings=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _yes_no(folder: Path, system: str | None) -> Path:
    path = folder / "train.jsonl"
    head = [{"role": "system", "content": system}] if system else []
    rows = [{"messages": [*head, {"role": "user", "content": f"Is {n} even?"},
                          {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]} for n in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """Eight 'Is n even?' chats, user and assistant turns only."""
    return _yes_no(tmp_path_factory.mktemp("data"), None)


@pytest.fixture(scope="module")
def system_data_file(tmp_path_factory) -> Path:
    """The same eight chats, each opening with a system message (the method tests train on these)."""
    return _yes_no(tmp_path_factory.mktemp("data"), "Answer yes or no.")
