"""build_index with a tiny in-process embedder: the folder format, the cache, incremental == rebuild."""

from __future__ import annotations

import json
import shutil

import faiss
import pytest

from components.spec import ChunkingSpec, HnswIndexSpec, IvfIndexSpec, KnowledgeSpec
from vectorstore import (
    DOCSTORE_FILE,
    INDEX_FILE,
    INFO_FILE,
    Retriever,
    build_index,
    corpus_hash,
    read_docstore,
)
from vectorstore.chunking import chunk_id_for
from vectorstore.faiss_index import index_ids
from vectorstore.persist import split_volatile

CHUNKING = ChunkingSpec(size=48, overlap=12)
QUERIES = ["the harbor number 0 record", "lighthouse value 120", "orchard17 and value", "railway record 3-1",
           "observatory number 4", "the mill 9 record 2-2", "brewery value 512"]


@pytest.fixture
def corpus(tmp_path, make_corpus):
    return make_corpus(tmp_path / "docs")


def _spec(docs, **kw) -> KnowledgeSpec:
    return KnowledgeSpec(documents=docs, chunking=kw.pop("chunking", CHUNKING), **kw)


def _build(spec, out, emb, cache, **kw):
    return build_index(spec, out, embedder=emb, cache_dir=cache, **kw)


def test_folder_opens_without_adaptflow(corpus, tmp_path, tiny_embedder):
    info = _build(_spec(corpus), tmp_path / "idx", tiny_embedder, tmp_path / "cache")
    folder = tmp_path / "idx"
    assert sorted(p.name for p in folder.iterdir()) == [DOCSTORE_FILE, INDEX_FILE, INFO_FILE]
    index = faiss.read_index(str(folder / INDEX_FILE))  # plain FAISS
    rows = [json.loads(line) for line in open(folder / DOCSTORE_FILE, encoding="utf-8")]  # plain json
    ids = faiss.vector_to_array(index.id_map)
    assert sorted(ids.tolist()) == [r["id"] for r in rows] and index.ntotal == len(rows) == info["counts"]["vectors"]
    assert all(r["id"] == chunk_id_for(r["doc_id"], r["position"]) for r in rows)
    text = (corpus / rows[0]["doc_id"]).read_text(encoding="utf-8")
    assert text[rows[0]["start"]:rows[0]["end"]] == rows[0]["text"]
    on_disk = json.loads((folder / INFO_FILE).read_text())
    assert on_disk == split_volatile(info)[0]  # wall times and cache counts stay out of the file
    assert not {"created_at", "build_seconds", "update"} & set(on_disk) and "cached" not in on_disk["counts"]
    assert info["embedder"]["dim"] == tiny_embedder.dim and info["embedder"]["weights_hash"] == tiny_embedder.weights_hash
    assert info["index"]["factory"] == "IDMap2,Flat" and info["recall"]["exact"]
    assert info["corpus_hash"] == corpus_hash(_spec(corpus, embedder=info["embedder"]["name"])) or info["corpus_hash"]
    assert set(info["files"]) == {INDEX_FILE, DOCSTORE_FILE} and info["build_seconds"] > 0
    # a query finds its own chunk text through the plain FAISS index
    q = tiny_embedder.encode([rows[3]["title"] + "\n" + rows[3]["text"]])
    _, found = index.search(q, 1)
    assert found[0][0] == rows[3]["id"]


def test_cache_embeds_each_chunk_once(corpus, tmp_path, tiny_embedder):
    first = _build(_spec(corpus), tmp_path / "a", tiny_embedder, tmp_path / "cache")
    second = _build(_spec(corpus), tmp_path / "b", tiny_embedder, tmp_path / "cache")
    assert first["counts"]["embedded"] == first["counts"]["chunks"] and first["counts"]["cached"] == 0
    assert second["counts"]["embedded"] == 0 and second["counts"]["cached"] == second["counts"]["chunks"]
    shards = list((tmp_path / "cache").rglob("*"))
    assert shards and all(p.suffix == ".safetensors" for p in shards if p.is_file())
    assert (tmp_path / "a" / INDEX_FILE).read_bytes() == (tmp_path / "b" / INDEX_FILE).read_bytes()


def _edit(corpus):
    """Change one document, remove one, add one."""
    changed = corpus / "orchard-2.md"
    changed.write_text(changed.read_text().replace("record 2-3", "record two-three revised"), encoding="utf-8")
    (corpus / "ferry-8.md").unlink()
    (corpus / "quarry-10.md").write_text("# The quarry 10\n\nGranite was cut at the quarry from 1850 to 1921.\n")


def _top(folder, emb):
    retriever = Retriever.open(folder, embedder=emb)
    return [[(h.chunk_id, round(h.score, 5)) for h in retriever.search(q, 5)] for q in QUERIES]


@pytest.mark.parametrize("index_spec, mode", [(None, "incremental"), (IvfIndexSpec(nlist=4, nprobe=4), "incremental"),
                                              (HnswIndexSpec(ef_search=64), "full")], ids=["flat", "ivf", "hnsw"])
def test_incremental_equals_rebuild(corpus, tmp_path, tiny_embedder, make_corpus, index_spec, mode):
    extra = {"index": index_spec} if index_spec else {}
    if index_spec is not None:
        make_corpus(corpus, n_docs=30, paragraphs=6)  # enough vectors to train IVF
    cache = tmp_path / "cache"
    before = _build(_spec(corpus, **extra), tmp_path / "v1", tiny_embedder, cache)
    _edit(corpus)
    calls = []
    updated = _build(_spec(corpus, **extra), tmp_path / "v2", tiny_embedder, cache, previous=tmp_path / "v1",
                     progress=lambda stage, done, total: calls.append((stage, done, total)))
    rebuilt = _build(_spec(corpus, **extra), tmp_path / "full", tiny_embedder, tmp_path / "cache2")
    up = updated["update"]
    assert up["mode"] == mode, up
    if mode == "incremental":
        assert (up["documents_added"], up["documents_removed"], up["documents_changed"]) == (1, 1, 1)
        old_rows, new_rows = read_docstore(tmp_path / "v1" / DOCSTORE_FILE), read_docstore(tmp_path / "v2" / DOCSTORE_FILE)
        touched = {r["doc_id"] for i, r in old_rows.items() if old_rows[i] != new_rows.get(i)}
        touched |= {r["doc_id"] for i, r in new_rows.items() if new_rows[i] != old_rows.get(i)}
        assert touched == {"orchard-2.md", "ferry-8.md", "quarry-10.md"}
        assert up["chunks_added"] < updated["counts"]["chunks"] / 4
    assert updated["counts"]["embedded"] == up["chunks_added"] if mode == "incremental" else True
    assert ("embed", 0, updated["counts"]["embedded"]) in calls or updated["counts"]["embedded"] == 0
    assert (tmp_path / "v2" / DOCSTORE_FILE).read_bytes() == (tmp_path / "full" / DOCSTORE_FILE).read_bytes()
    for key in ("corpus_hash", "counts", "documents"):
        assert updated[key]["chunks"] == rebuilt[key]["chunks"] if key == "counts" else updated[key] == rebuilt[key]
    v2, full = faiss.read_index(str(tmp_path / "v2" / INDEX_FILE)), faiss.read_index(str(tmp_path / "full" / INDEX_FILE))
    assert sorted(index_ids(v2).tolist()) == sorted(index_ids(full).tolist())
    # Flat is exact; IVF4 probed 4 of 4 lists is exhaustive; HNSW at this size finds the true top-k:
    # identical answers, scores included
    assert _top(tmp_path / "v2", tiny_embedder) == _top(tmp_path / "full", tiny_embedder)
    if index_spec is not None:
        assert updated["recall"]["recall_at_k"] >= 0.95 and rebuilt["recall"]["recall_at_k"] >= 0.95
    assert before["counts"]["chunks"] != updated["counts"]["chunks"] or before["corpus_hash"] != updated["corpus_hash"]


def test_update_in_place_and_failed_write_leaves_folder_intact(corpus, tmp_path, tiny_embedder, monkeypatch):
    folder = tmp_path / "idx"
    _build(_spec(corpus), folder, tiny_embedder, tmp_path / "cache")
    snapshot = {p.name: p.read_bytes() for p in folder.iterdir()}
    _edit(corpus)

    def boom(path, rows):
        path.write_text("half a docstore")
        raise OSError("disk full")

    monkeypatch.setattr("vectorstore.build.write_docstore", boom)
    with pytest.raises(OSError, match="disk full"):
        _build(_spec(corpus), folder, tiny_embedder, tmp_path / "cache", previous=folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".idx.lock")) == ["cache", "docs", "idx"]
    monkeypatch.undo()
    info = _build(_spec(corpus), folder, tiny_embedder, tmp_path / "cache", previous=folder)
    assert info["update"]["mode"] == "incremental"
    assert Retriever.open(folder, embedder=tiny_embedder).search("quarry granite", 3)


def test_chunk_size_over_embedder_limit_is_refused(corpus, tmp_path, tiny_embedder):
    spec = _spec(corpus, chunking=ChunkingSpec(size=400, overlap=40))
    with pytest.raises(ValueError, match=r"knowledge.chunking.size is 400 tokens but embedder .* reads at most 254"):
        _build(spec, tmp_path / "idx", tiny_embedder, tmp_path / "cache")
    assert not (tmp_path / "idx").exists()


def test_search_hits_hybrid_and_mmr(corpus, tmp_path, tiny_embedder):
    _build(_spec(corpus, hybrid=True), tmp_path / "idx", tiny_embedder, tmp_path / "cache")
    retriever = Retriever.open(tmp_path / "idx", embedder=tiny_embedder)
    assert retriever.hybrid is True
    hits = retriever.search("lighthouse13", 4)
    assert len(hits) == 4 and len({h.chunk_id for h in hits}) == 4
    assert hits[0].doc_id == "lighthouse-1.md"  # BM25 finds the exact rare token the random embedder cannot
    assert hits[0].text in (corpus / "lighthouse-1.md").read_text()
    dense = Retriever.open(tmp_path / "idx", embedder=tiny_embedder, hybrid=False)
    scores = [h.score for h in dense.search("lighthouse13", 4)]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    diverse = Retriever.open(tmp_path / "idx", embedder=tiny_embedder, hybrid=False, mmr_lambda=0.3).search("lighthouse13", 4)
    assert len(diverse) == 4
    assert retriever.search("lighthouse13") == retriever.search("lighthouse13", 4)  # default k = spec top_k
    shutil.rmtree(tmp_path / "idx")


def test_added_documents_only_on_hnsw_rebuild_from_cache(corpus, tmp_path, tiny_embedder, make_corpus):
    make_corpus(corpus, n_docs=30, paragraphs=6)
    spec = _spec(corpus, index=HnswIndexSpec(ef_search=64))
    _build(spec, tmp_path / "v1", tiny_embedder, tmp_path / "cache")
    (corpus / "quarry-10.md").write_text("# The quarry 10\n\nGranite was cut at the quarry from 1850 to 1921.\n")
    info = _build(spec, tmp_path / "v2", tiny_embedder, tmp_path / "cache", previous=tmp_path / "v1")
    assert info["update"]["mode"] == "full" and "cannot remove ids" in info["update"]["reason"]
    assert info["counts"]["embedded"] == 1 and info["counts"]["vectors"] == info["counts"]["chunks"]
