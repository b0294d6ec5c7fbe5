"""Approximate indexes against an exact IndexFlat oracle on random data; the auto policy's choices."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from components.spec import (
    AutoIndexSpec,
    FactoryIndexSpec,
    FlatIndexSpec,
    HnswIndexSpec,
    IvfIndexSpec,
    IvfPqIndexSpec,
)
from vectorstore.faiss_index import (
    FLAT_MAX_VECTORS,
    RecallError,
    build_checked,
    build_faiss,
    holdout,
    index_ids,
    measure_recall,
    plan_index,
    recheck,
)


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((50, dim)).astype(np.float32)
    x = centers[rng.integers(0, 50, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 7919 + 10**12)  # ids far from positions: the IDMap must be used


def test_auto_plan_thresholds():
    assert plan_index(AutoIndexSpec(), 500, 384).kind == "flat"
    assert plan_index(AutoIndexSpec(), FLAT_MAX_VECTORS, 384).kind == "flat"
    assert plan_index(AutoIndexSpec(), FLAT_MAX_VECTORS + 1, 384).kind in {"hnsw", "ivf"}
    big = plan_index(AutoIndexSpec(memory_budget_mb=100), 1_000_000, 384)  # 1.5 GB of floats > 100 MB
    assert big.kind == "ivfpq" and "PQ48" in big.factory and big.min_recall == 0.95
    assert plan_index(AutoIndexSpec(memory_budget_mb=1), 5_000, 64).kind == "ivfpq"


@pytest.mark.parametrize("spec", [
    HnswIndexSpec(m=16, ef_search=128),
    IvfIndexSpec(nlist=32, nprobe=16),
    FactoryIndexSpec(type="IVF32,Flat"),
    AutoIndexSpec(memory_budget_mb=1),  # 5000 x 64 floats = 1.3 MB > 1 MB: IVF-PQ with an 8-bit refine
], ids=["hnsw", "ivf", "factory", "auto-ivfpq"])
def test_ann_matches_flat_oracle(spec):
    x = _clustered(5000, 64)
    ids = _ids(len(x))
    plan = plan_index(spec, len(x), 64)
    index, record = build_checked(plan, x, ids, k=10)
    assert record["recall_at_k"] >= 0.95 and not record["exact"] and record["queries"] == 200
    # independent check on fresh queries, against brute force
    queries = _clustered(100, 64, seed=9)
    truth = ids[np.argsort(-(queries @ x.T), axis=1)[:, :10]]
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(found[i]) & set(truth[i])) / 10 for i in range(100)])
    assert recall >= 0.9
    assert sorted(index_ids(index).tolist()) == sorted(ids.tolist())
    assert len(holdout(len(x))) == 200


def test_flat_is_exact():
    x = _clustered(500, 32)
    ids = _ids(500)
    plan = plan_index(FlatIndexSpec(), 500, 32)
    index, record = build_checked(plan, x, ids, 4)
    assert record["exact"] is True and index.ntotal == 500
    assert measure_recall(index, x, ids, _clustered(50, 32, seed=5), 10) == 1.0


def test_recall_floor_is_enforced():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 32)).astype(np.float32)  # uniform on the sphere: hard for IVF
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = _ids(4000)
    spec = IvfIndexSpec(nlist=64, nprobe=1, min_recall=0.99)
    with pytest.raises(RecallError, match=r"knowledge.index: IVF64,Flat reached recall@10 = 0\.\d+ .*below min_recall 0.99"):
        build_checked(plan_index(spec, 4000, 32), x, ids, 10)
    lowered = plan_index(IvfIndexSpec(nlist=64, nprobe=1, min_recall=0.05), 4000, 32)
    index, record = build_checked(lowered, x, ids, 10)
    assert record["recall_at_k"] < 0.99 and index.ntotal == 4000
    assert recheck(index, lowered, x, ids, 10) == record and index.ntotal == 4000  # held-out vectors are back


def test_auto_tunes_search_parameters_up_to_the_floor():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    plan = plan_index(FactoryIndexSpec(type="IVF64,Flat"), 3000, 32)
    index, record = build_checked(plan, x, _ids(3000), 10)
    assert record["recall_at_k"] >= 0.95 and record["params"]["nprobe"] > 16
    assert faiss.extract_index_ivf(index).nprobe == record["params"]["nprobe"]


@pytest.mark.parametrize("spec, fragment", [
    (FactoryIndexSpec(type="NotAnIndex12"), "knowledge.index.type: FAISS cannot build"),
    (IvfPqIndexSpec(pq_m=7), "knowledge.index.pq_m is 7 but must divide the embedder dimension 64"),
    (IvfIndexSpec(nlist=5000), "knowledge.index.nlist is 5000 but there are only 100 vectors"),
])
def test_bad_index_specs_name_the_field(spec, fragment):
    x = _clustered(100, 64)
    with pytest.raises(ValueError, match=fragment):
        build_faiss(plan_index(spec, 100, 64), x, _ids(100))
