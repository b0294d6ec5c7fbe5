"""Above the memory budget, `auto` builds per-shard indexes queried through faiss.IndexShards.

Oracle: exact inner-product search over the same vectors. The corpus is synthetic: 10k 1024-d unit
vectors (a large embedder's width) near an 8-d subspace, as real embeddings lie near a low-dimensional
one. The smallest budget a spec can ask for (1 MB) holds ~7.7k such 8-bit IVF-PQ codes with their ids;
embedding that many chunks of text would take minutes here.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from components.spec import AutoIndexSpec
from vectorstore.docstore import DOCSTORE_FILE, write_docstore
from vectorstore.faiss_index import build_checked, index_ids, plan_index
from vectorstore.index_shards import shard_file, shards_of, writers
from vectorstore.persist import FORMAT, INDEX_FILE, IndexIntegrityError, open_index_dir, write_index_dir

N, DIM = 10_000, 1024


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((N, 8)).astype(np.float32) @ rng.standard_normal((8, DIM)).astype(np.float32)
    x = latent + 0.3 * rng.standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.choice(np.iinfo(np.int64).max, N, replace=False).astype(np.int64)
    return x, ids


@pytest.fixture(scope="module")
def sharded(corpus, tmp_path_factory):
    x, ids = corpus
    spec = AutoIndexSpec(memory_budget_mb=1, min_recall=0.6)
    plan = plan_index(spec, N, DIM)
    index, recall = build_checked(plan, x, ids, k=4)
    folder = tmp_path_factory.mktemp("idx") / "index"
    rows = [{"id": int(i), "doc_id": f"d{p}", "position": 0, "title": "", "text": f"chunk {p}", "start": 0, "end": 0,
             "n_tokens": 1, "embed_hash": str(p), "metadata": {}} for p, i in enumerate(ids)]
    info = {"format": FORMAT, "embedder": {"dim": DIM}, "counts": {"vectors": int(index.ntotal)},
            "index": {"kind": plan.kind, "factory": plan.factory, "params": recall["params"], "shards": plan.shards},
            "recall": recall}
    write_index_dir(folder, {**writers(index, INDEX_FILE), DOCSTORE_FILE: lambda p: write_docstore(p, rows)}, info)
    return plan, index, recall, folder


def test_budget_forces_shards_each_within_it(sharded):
    plan, index, _, _ = sharded
    assert plan.shards == 2 and "faiss.IndexShards" in plan.reason
    parts = shards_of(index)
    assert len(parts) == 2 and sum(p.ntotal for p in parts) == N
    assert abs(parts[0].ntotal - parts[1].ntotal) <= 2  # even runs, plus the held-out queries spread over both
    assert plan_index(AutoIndexSpec(memory_budget_mb=2), N, DIM).shards == 1  # the same corpus fits 2 MB unsharded
    for part in parts:  # each shard's codes and ids, as FAISS sizes them, fit the budget (the point of sharding)
        ivf = faiss.extract_index_ivf(part)
        assert part.ntotal * (ivf.code_size + 8) <= 2**20


def test_recall_measured_against_exact_search(sharded, corpus):
    plan, index, recall, _ = sharded
    x, ids = corpus
    assert not recall["exact"] and recall["recall_at_k"] >= plan.min_recall and recall["queries"] == 200
    assert sorted(index_ids(index).tolist()) == sorted(ids.tolist())
    # the merged top-k agrees with exact search on fresh queries near the corpus, too
    rng = np.random.default_rng(1)
    q = x[rng.choice(N, 100, replace=False)] + 0.05 * rng.standard_normal((100, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    _, truth = exact.search(q, 1)
    _, found = index.search(q, 4)
    assert np.mean([ids[t] in f for t, f in zip(truth[:, 0], found, strict=True)]) >= 0.9


def test_persisted_shards_reload_and_are_verified(sharded, corpus):
    plan, index, recall, folder = sharded
    x, _ = corpus
    assert sorted(p.name for p in folder.iterdir()) == [DOCSTORE_FILE, shard_file(0), shard_file(1), "index.json"]
    info, loaded, rows = open_index_dir(folder)
    assert len(shards_of(loaded)) == 2 and len(rows) == N and info["index"]["shards"] == 2
    before, after = index.search(x[:50], 5), loaded.search(x[:50], 5)
    np.testing.assert_array_equal(before[1], after[1])  # same shards, same search parameters
    shard = folder / shard_file(1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match=r"index-1\.faiss: sha256 does not match index\.json"):
        open_index_dir(folder)
    shard.unlink()
    with pytest.raises(IndexIntegrityError, match=r"index-1\.faiss: missing \(listed in index\.json\)"):
        open_index_dir(folder)
