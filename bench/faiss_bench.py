"""FAISS `auto` vs numpy exact search on synthetic 384-d vectors: QPS ratio and recall@10.

    .venv/bin/python -m bench.faiss_bench                 # run(): 100k vectors
    .venv/bin/python -m bench.faiss_bench --thresholds    # the sweep behind FLAT_MAX_VECTORS

The vectors imitate sentence embeddings: 1,000 Gaussian clusters, L2-normalized; queries
are fresh draws from the same mixture (never corpus points). The numpy baseline is the exact
answer (`X @ q`, argpartition), measured in the same run on the same machine. QPS is for
one query at a time (how a RAG service sees them) and, separately, for a batch of queries,
with both FAISS and numpy (BLAS) limited to one thread: a fair comparison, and stable on a
machine shared with other work (OpenMP threads spin badly when cores are busy).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads libgomp: see vectorstore/__init__.py

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.spec import AutoIndexSpec  # noqa: E402
from vectorstore.faiss_index import RecallError, build_checked, build_faiss, plan_index  # noqa: E402


def synthetic(n: int, dim: int, n_queries: int, seed: int = 0, clusters: int = 1000, spread: float = 1.5,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters; `spread` 1.5 puts two points of one cluster at cosine ~0.3, of two clusters at ~0."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        x = centers[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(n_queries)


def numpy_topk(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ x.T
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _qps(search, queries: np.ndarray, single: bool, repeats: int = 3) -> float:
    """Queries per second: one at a time from the median per-query time (robust to a busy machine),
    or for the whole batch at once (best of `repeats`)."""
    if single:
        times = []
        for q in queries:
            started = time.perf_counter()
            search(q[None, :])
            times.append(time.perf_counter() - started)
        return 1.0 / float(np.median(times))
    best = min(_timed(search, queries) for _ in range(repeats))
    return len(queries) / best


def _timed(search, queries: np.ndarray) -> float:
    started = time.perf_counter()
    search(queries)
    return time.perf_counter() - started


def run(n: int = 100_000, dim: int = 384, n_queries: int = 500, k: int = 10, seed: int = 0) -> dict:
    x, queries = synthetic(n, dim, n_queries, seed)
    ids = np.arange(n, dtype=np.int64)
    plan = plan_index(AutoIndexSpec(), n, dim)
    started = time.perf_counter()
    index, tuned = build_checked(plan, x, ids, k)  # what build_index does: build + held-out recall check
    build_s = time.perf_counter() - started

    with threadpool_limits(1):
        return _measure(index, plan, tuned, x, queries, k, build_s)


def _measure(index, plan, tuned, x, queries, k, build_s) -> dict:
    n, dim, n_queries = len(x), x.shape[1], len(queries)
    truth = numpy_topk(x, queries, k)
    _, found = index.search(queries, k)
    recall = float(np.mean([len(set(found[i]) & set(truth[i])) / k for i in range(n_queries)]))

    faiss_single = _qps(lambda q: index.search(q, k), queries, single=True)
    numpy_single = _qps(lambda q: numpy_topk(x, q, k), queries[:100], single=True)
    faiss_batch = _qps(lambda q: index.search(q, k), queries, single=False)
    numpy_batch = _qps(lambda q: numpy_topk(x, q, k), queries, single=False)
    return {
        "n": n, "dim": dim, "queries": n_queries, "index": plan.factory, "params": tuned["params"],
        "build_seconds": round(build_s, 1),
        "build_recall_at_10": tuned["recall_at_k"],
        "faiss_qps": round(faiss_single), "numpy_qps": round(numpy_single),
        "faiss_qps_ratio": round(faiss_single / numpy_single, 1),
        "faiss_qps_batch": round(faiss_batch), "numpy_qps_batch": round(numpy_batch),
        "faiss_qps_ratio_batch": round(faiss_batch / numpy_batch, 2),
        "faiss_recall_at_10": round(recall, 4),
    }


def thresholds(sizes: tuple[int, ...] = (2_000, 5_000, 10_000, 20_000, 50_000), dim: int = 384, n_queries: int = 200) -> list[dict]:
    """Per corpus size: exact Flat vs HNSW32 and IVF-Flat (each tuned to recall >= 0.95), one thread."""
    rows = []
    for n in sizes:
        x, queries = synthetic(n, dim, n_queries, seed=1)
        with threadpool_limits(1):
            rows.append(_threshold_row(x, queries))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _threshold_row(x: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    from components.spec import HnswIndexSpec, IvfIndexSpec
    from vectorstore.faiss_index import IndexPlan

    n, dim = x.shape
    ids = np.arange(n, dtype=np.int64)
    truth = numpy_topk(x, queries, k)
    flat = build_faiss(IndexPlan("flat", "IDMap2,Flat"), x, ids)
    row: dict = {"n": n, "flat_ms": round(1000 / _qps(lambda q: flat.search(q, k), queries, single=True), 3)}
    tuning = {"hnsw": tuple({"efSearch": e} for e in (16, 32, 64, 128, 256, 512)),
              "ivf": tuple({"nprobe": p} for p in (4, 8, 16, 32, 64, 128, 256))}
    for name, spec in (("hnsw", HnswIndexSpec()), ("ivf", IvfIndexSpec())):
        base = plan_index(spec, n, dim)
        plan = IndexPlan(base.kind, base.factory, base.params, base.build, 0.95, tuning[name])
        started = time.perf_counter()
        try:
            index, record = build_checked(plan, x, ids, k)
            row[f"{name}_params"] = record["params"]
        except RecallError:
            row[f"{name}_params"] = f"recall < 0.95 even at {plan.tuning[-1]}"
            continue
        row[f"{name}_build_s"] = round(time.perf_counter() - started, 2)
        _, found = index.search(queries, k)
        row[f"{name}_recall"] = round(float(np.mean([len(set(found[i]) & set(truth[i])) / k for i in range(len(queries))])), 3)
        row[f"{name}_ms"] = round(1000 / _qps(lambda q, ix=index: ix.search(q, k), queries, single=True), 3)
    return row


if __name__ == "__main__":
    if "--thresholds" in sys.argv:
        thresholds()
    else:
        result = run()
        print(json.dumps(result, indent=2))
        print(f"faiss_qps_ratio={result['faiss_qps_ratio']} faiss_recall_at_10={result['faiss_recall_at_10']}")
