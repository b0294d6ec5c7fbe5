"""Damaged index folders and mismatched embedders are refused with errors that name the file."""

from __future__ import annotations

import json

import pytest

from components.spec import ChunkingSpec, KnowledgeSpec
from vectorstore import (
    DOCSTORE_FILE,
    INDEX_FILE,
    INFO_FILE,
    EmbedderError,
    IndexIntegrityError,
    Retriever,
    build_index,
)


@pytest.fixture
def index_dir(tmp_path, tiny_embedder, make_corpus):
    spec = KnowledgeSpec(documents=make_corpus(tmp_path / "docs", n_docs=4), chunking=ChunkingSpec(size=48, overlap=8))
    build_index(spec, tmp_path / "idx", embedder=tiny_embedder, cache_dir=tmp_path / "cache")
    return tmp_path / "idx"


def _flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_folder_opens(index_dir, tiny_embedder):
    retriever = Retriever.open(index_dir, embedder=tiny_embedder)
    assert len(retriever) == retriever.info["counts"]["vectors"] and retriever.search("harbor", 2)


@pytest.mark.parametrize("name, damage, message", [
    (INDEX_FILE, "truncate", r"index\.faiss: \d+ bytes but index\.json records \d+ \(truncated or replaced\)"),
    (INDEX_FILE, "flip", r"index\.faiss: sha256 does not match index\.json \(the file is corrupted\)"),
    (DOCSTORE_FILE, "flip", r"docstore\.jsonl: sha256 does not match index\.json"),
    (DOCSTORE_FILE, "delete", r"docstore\.jsonl: missing \(listed in index\.json\)"),
    (INFO_FILE, "truncate", r"index\.json: not valid JSON"),
])
def test_damaged_files_are_refused(index_dir, tiny_embedder, name, damage, message):
    path = index_dir / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flip":
        _flip_byte(path, path.stat().st_size // 2)
    else:
        path.unlink()
    with pytest.raises(IndexIntegrityError, match=message) as err:
        Retriever.open(index_dir, embedder=tiny_embedder)
    assert str(index_dir) in str(err.value) and "rebuild" in str(err.value)


def test_without_hash_checks_structure_is_still_verified(index_dir, tiny_embedder):
    faiss_file = index_dir / INDEX_FILE
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    with pytest.raises(IndexIntegrityError, match=r"index\.faiss: FAISS cannot read it"):
        Retriever.open(index_dir, embedder=tiny_embedder, verify=False)


def test_docstore_out_of_step_with_faiss_is_refused(index_dir, tiny_embedder):
    docstore = index_dir / DOCSTORE_FILE
    lines = docstore.read_text(encoding="utf-8").splitlines(keepends=True)
    docstore.write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(IndexIntegrityError, match=r"docstore\.jsonl: its \d+ ids are not the \d+ ids in index\.faiss"):
        Retriever.open(index_dir, embedder=tiny_embedder, verify=False)


def test_mismatched_embedder_is_refused(index_dir, other_embedder):
    with pytest.raises(EmbedderError, match=r"index\.json: the index was built with embedder .* weights hash") as err:
        Retriever.open(index_dir, embedder=other_embedder)
    assert "rebuild the index" in str(err.value)


def test_same_weights_other_pooling_is_refused(index_dir, tiny_embedder_dir, tmp_path):
    """The weights hash cannot see a pooling change; the recorded probe vector can."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from vectorstore import load_embedder

    hf = tiny_embedder_dir.parent / "hf"
    model = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=256), Pooling(32, "cls"), Normalize()],
                                device="cpu")
    model.save(str(tmp_path / "cls"))
    cls_embedder = load_embedder(str(tmp_path / "cls"))
    with pytest.raises(EmbedderError, match="same weights but the probe vector moved"):
        Retriever.open(index_dir, embedder=cls_embedder)


def test_embedder_is_loaded_from_index_json_by_default(index_dir, tiny_embedder):
    info = json.loads((index_dir / INFO_FILE).read_text())
    retriever = Retriever.open(index_dir)
    assert retriever.embedder is tiny_embedder and info["embedder"]["name"] == tiny_embedder.name
