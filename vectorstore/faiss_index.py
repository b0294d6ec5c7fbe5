"""FAISS indexes as factory strings: the `auto` policy, building, and recall against an exact oracle.

Vectors are L2-normalized, so inner product is cosine similarity. Chunk ids are int64 hashes,
not positions: an IVF index stores them natively (its `remove_ids` is only correct that way,
and a hashtable direct map lets it reconstruct by id); every other index is wrapped in
`IndexIDMap2`. An approximate index is accepted only after recall@k against an exact
`IndexFlatIP` over the same vectors, on held-out queries, reaches `min_recall`; `auto` raises
its search parameters (efSearch, nprobe, k_factor) step by step until it does. The thresholds
below were measured with `bench/faiss_bench.py`; see docs/docstore.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import faiss
import numpy as np

from components.spec import (
    AutoIndexSpec,
    FactoryIndexSpec,
    FlatIndexSpec,
    HnswIndexSpec,
    IvfIndexSpec,
    IvfPqIndexSpec,
)
from vectorstore import index_shards

IndexSpecT = AutoIndexSpec | FlatIndexSpec | HnswIndexSpec | IvfIndexSpec | IvfPqIndexSpec | FactoryIndexSpec

# Exact search up to here. Measured on 384-d vectors, 1 thread (bench/faiss_bench.py thresholds(),
# table in docs/docstore.md): Flat costs 0.1-27 ms per query up to 20k vectors, below the ~50 ms
# of embedding the query, with no build and no recall loss; HNSW32 (< 1 ms) took minutes to build
# at 20k here. Past it Flat grows linearly (47 ms at 50k) and HNSW stays under a millisecond.
FLAT_MAX_VECTORS = 20_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 32
RECALL_QUERIES, RECALL_K, RECALL_MARGIN = 200, 10, 0.02
MIN_POINTS_PER_CENTROID = 39  # FAISS's own k-means warning threshold


class RecallError(RuntimeError):
    """An approximate index whose measured recall is below the spec's floor."""


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # flat | hnsw | ivf | ivfpq | factory
    factory: str  # what faiss.index_factory receives, IDMap2 included where the index needs one
    params: dict[str, float] = field(default_factory=dict)  # search-time: efSearch, nprobe, k_factor
    build: dict[str, int] = field(default_factory=dict)  # build-time: efConstruction
    min_recall: float | None = None  # None: exact search, nothing to measure
    tuning: tuple[dict[str, float], ...] = ()  # ever more expensive params `auto` may try
    reason: str = ""
    shards: int = 1  # > 1: `factory` per shard, queried through faiss.IndexShards (index_shards.py)

    @property
    def exact(self) -> bool:
        return self.min_recall is None


def default_nlist(n: int) -> int:
    """~4*sqrt(n) inverted lists, but never so many that k-means sees < 39 points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def _pq_shape(n: int, dim: int) -> tuple[int, int]:
    """(sub-quantizers, bits): ~8 dims per sub-quantizer, fewer bits when there is little to train on."""
    m = next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)
    bits = 8 if n >= 256 * MIN_POINTS_PER_CENTROID else max(4, min(8, int(math.log2(max(n, 16) / MIN_POINTS_PER_CENTROID))))
    return m, bits


def _doubling(name: str, start: int, stop: int) -> tuple[dict[str, float], ...]:
    steps, v = [], start
    while v <= stop:
        steps.append({name: v})
        v *= 2
    return tuple(steps)


def _auto_plan(spec: AutoIndexSpec, n: int, dim: int) -> IndexPlan:
    budget = spec.memory_budget_mb * 2**20
    float_bytes = n * dim * 4
    if float_bytes <= budget and n <= FLAT_MAX_VECTORS:
        return IndexPlan("flat", "IDMap2,Flat", reason=f"{n} vectors <= {FLAT_MAX_VECTORS}: exact search is fast enough")
    if float_bytes <= budget:
        ef = _doubling("efSearch", HNSW_EF_SEARCH, 2048)
        return IndexPlan(
            "hnsw", f"IDMap2,HNSW{HNSW_M}", dict(ef[0]), {"efConstruction": HNSW_EF_CONSTRUCTION}, spec.min_recall, ef,
            f"{n} vectors > {FLAT_MAX_VECTORS} and {float_bytes / 2**20:.0f} MB fit memory_budget_mb={spec.memory_budget_mb}",
        )
    m, bits = _pq_shape(n, dim)
    per_vector = math.ceil(m * bits / 8) + index_shards.ID_BYTES
    shards = index_shards.shard_count(n, per_vector, budget)
    if shards > 1:
        per_shard = _auto_plan(spec, math.ceil(n / shards), dim)
        return replace(per_shard, shards=shards, reason=(
            f"{n} vectors as IVF-PQ codes and ids ({n * per_vector / 2**20:.2f} MB) exceed "
            f"memory_budget_mb={spec.memory_budget_mb}: {shards} shards of {per_shard.factory}, "
            "queried through faiss.IndexShards"))
    nlist = default_nlist(n)
    m, bits = _pq_shape(n, dim)
    refine = n * (dim + m) <= budget  # re-rank PQ candidates with 8-bit scalar-quantized vectors
    factory = f"IDMap2,IVF{nlist},PQ{m}x{bits},Refine(SQ8)" if refine else f"IVF{nlist},PQ{m}x{bits}"
    steps = [{"nprobe": p, "k_factor": kf} for p in (16, 32, 64, 128, 256, 512) if p <= max(16, nlist) for kf in (4, 16)]
    if not refine:
        steps = [{"nprobe": s["nprobe"]} for s in steps if s["k_factor"] == 4]
    return IndexPlan(
        "ivfpq", factory, dict(steps[0]), {}, spec.min_recall, tuple(steps),
        f"{float_bytes / 2**20:.0f} MB of float vectors exceed memory_budget_mb={spec.memory_budget_mb}: "
        f"IVF-PQ ({m} bytes/vector{' + 8-bit refine' if refine else ''})",
    )


def plan_index(spec: IndexSpecT, n: int, dim: int) -> IndexPlan:
    """Resolve an index spec to a factory string and search parameters for n vectors of `dim`."""
    if isinstance(spec, AutoIndexSpec):
        return _auto_plan(spec, n, dim)
    if isinstance(spec, FlatIndexSpec):
        return IndexPlan("flat", "IDMap2,Flat", reason="index.type is flat")
    if isinstance(spec, HnswIndexSpec):
        return IndexPlan("hnsw", f"IDMap2,HNSW{spec.m}", {"efSearch": spec.ef_search},
                         {"efConstruction": spec.ef_construction}, spec.min_recall, reason="index.type is hnsw")
    if isinstance(spec, IvfIndexSpec):  # IvfPqIndexSpec included
        nlist = spec.nlist or default_nlist(n)
        if nlist > n:
            raise ValueError(
                f"knowledge.index.nlist is {nlist} but there are only {n} vectors; lower nlist or use `type: flat`"
            )
        if isinstance(spec, IvfPqIndexSpec):
            if dim % spec.pq_m:
                raise ValueError(
                    f"knowledge.index.pq_m is {spec.pq_m} but must divide the embedder dimension {dim}; "
                    f"use e.g. {_pq_shape(n, dim)[0]}"
                )
            return IndexPlan("ivfpq", f"IVF{nlist},PQ{spec.pq_m}x{spec.pq_bits}", {"nprobe": spec.nprobe},
                             min_recall=spec.min_recall, reason="index.type is ivfpq")
        return IndexPlan("ivf", f"IVF{nlist},Flat", {"nprobe": spec.nprobe},
                         min_recall=spec.min_recall, reason="index.type is ivf")
    factory = spec.type if spec.type.startswith("IDMap") or _native_ids(spec.type, dim) else f"IDMap2,{spec.type}"
    if spec.type.replace(" ", "") in {"Flat", "IDMap,Flat", "IDMap2,Flat"}:
        return IndexPlan("factory", factory, reason=f"index.type is the factory string '{spec.type}' (exact)")
    # a factory string cannot carry search parameters: raise them until recall reaches the floor
    steps = tuple({"nprobe": p, "efSearch": 4 * p, "k_factor": 4} for p in (16, 32, 64, 128, 256, 512))
    return IndexPlan("factory", factory, dict(steps[0]), {}, spec.min_recall, steps,
                     f"index.type is the factory string '{spec.type}'")


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except (RuntimeError, AttributeError):
        return None


def _native_ids(description: str, dim: int) -> bool:
    """True when the index is IVF-based (optionally pre-transformed) and can hold ids itself."""
    try:
        index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        return False
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    return isinstance(top, faiss.IndexIVF)


def set_params(index: faiss.Index, params: dict[str, float]) -> None:
    """Set search-time parameters wherever they apply in a (wrapped, or sharded) index."""
    for part in index_shards.shards_of(index) or ():
        set_params(part, params)
    node = faiss.downcast_index(index)
    while node is not None:
        if isinstance(node, faiss.IndexRefine):
            if "k_factor" in params:
                node.k_factor = float(params["k_factor"])
            node = faiss.downcast_index(node.base_index)
            continue
        if isinstance(node, faiss.IndexIVF) and "nprobe" in params:
            node.nprobe = int(min(params["nprobe"], node.nlist))
        if isinstance(node, faiss.IndexHNSW) and "efSearch" in params:
            node.hnsw.efSearch = int(params["efSearch"])
        inner = getattr(node, "index", None)
        node = faiss.downcast_index(inner) if isinstance(inner, faiss.Index) else None


def build_faiss(plan: IndexPlan, vectors: np.ndarray, ids: np.ndarray, train: np.ndarray | None = None) -> faiss.Index:
    """An index trained on `train` (default: `vectors`) holding `vectors` under `ids`, search parameters set.

    A sharded plan builds each shard on its own vectors (the point of sharding: no build sees them all)."""
    if plan.shards > 1:
        single = replace(plan, shards=1)
        index = index_shards.build_shards(plan.shards, vectors, ids, vectors if train is None else train,
                                          lambda v, i, t: build_faiss(single, v, i, train=t))
        set_params(index, plan.params)
        return index
    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(
            f"knowledge.index.type: FAISS cannot build '{plan.factory}' for dimension {dim} "
            f"({str(exc).splitlines()[-1]}); use auto, flat, hnsw, ivf, ivfpq or a valid factory string"
        ) from None
    ivf = _ivf(index)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # only for Hamming pre-filtering, which we never use; slow
    hnsw = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(hnsw, faiss.IndexHNSW) and "efConstruction" in plan.build:
        hnsw.hnsw.efConstruction = plan.build["efConstruction"]
    train = vectors if train is None else train
    if not index.is_trained:
        if ivf is not None and ivf.nlist > len(train):
            raise ValueError(f"{plan.factory} needs at least {ivf.nlist} vectors to train, got {len(train)}; use `type: flat`")
        index.train(train)
    if ivf is not None and not isinstance(index, faiss.IndexIDMap):
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) and remove_ids by id
    for start in range(0, len(vectors), 65536):
        index.add_with_ids(vectors[start:start + 65536], ids[start:start + 65536])
    set_params(index, plan.params)
    return index


def index_ids(index: faiss.Index) -> np.ndarray:
    """The int64 ids an index holds: its IDMap's, or those stored in its inverted lists."""
    parts = index_shards.shards_of(index)
    if parts is not None:
        return np.concatenate([index_ids(p) for p in parts]) if parts else np.zeros(0, np.int64)
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap):
        return faiss.vector_to_array(top.id_map).astype(np.int64)
    ivf = _ivf(index)
    if ivf is None:
        raise ValueError(f"{type(top).__name__} holds no ids; build it with an IDMap (the index folder is not ours)")
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def holdout(n: int, n_queries: int = RECALL_QUERIES, seed: int = 0) -> np.ndarray:
    """Positions of the vectors held out as recall queries: up to 200, at most a tenth of the corpus."""
    size = min(n_queries, max(1, n // 10))
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def measure_recall(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k; a result tied with the exact k-th score counts as found
    (duplicate vectors are interchangeable)."""
    k = min(k, len(vectors))
    oracle = faiss.IndexFlatIP(vectors.shape[1])
    oracle.add(vectors)
    exact_scores, exact_pos = oracle.search(queries, k)
    _, found = index.search(queries, k)
    pos_of = {int(i): p for p, i in enumerate(ids.tolist())}
    hits = 0
    for q in range(len(queries)):
        truth = set(ids[exact_pos[q]].tolist())
        kth = float(exact_scores[q, -1])
        for fid in found[q]:
            if fid >= 0 and (int(fid) in truth or float(vectors[pos_of[int(fid)]] @ queries[q]) >= kth - 1e-5):
                hits += 1
    return hits / (len(queries) * k)


def _tune(index: faiss.Index, plan: IndexPlan, base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray,
          k: int) -> dict[str, Any]:
    k = min(max(k, RECALL_K), len(base))
    # Tuning aims a little above the floor: 200 queries estimate recall to about +-0.01, and the
    # first setting that clears the floor is biased to have cleared it by luck.
    target = min(1.0, plan.min_recall + RECALL_MARGIN) if plan.tuning else plan.min_recall
    for params in plan.tuning or (plan.params,):
        set_params(index, params)
        recall = measure_recall(index, base, base_ids, queries, k)
        if recall >= target:
            break
    if recall < plan.min_recall:
        tried = ", ".join(f"{k_}={v}" for k_, v in params.items()) or "defaults"
        raise RecallError(
            f"knowledge.index: {plan.factory} reached recall@{k} = {recall:.3f} against exact search "
            f"({tried}), below min_recall {plan.min_recall}; raise ef_search / nprobe, use `type: flat`, "
            "or lower knowledge.index.min_recall if that recall is acceptable"
        )
    return {"exact": False, "k": k, "recall_at_k": round(recall, 4), "queries": len(queries),
            "min_recall": plan.min_recall, "params": dict(params)}


EXACT_RECORD = {"exact": True, "recall_at_k": 1.0, "queries": 0, "min_recall": None, "params": {}}


def build_checked(plan: IndexPlan, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[faiss.Index, dict[str, Any]]:
    """Build, then measure recall@k against exact search on held-out vectors (raising RecallError
    below the floor, after tuning search parameters under `auto`), then add the held-out vectors.

    The queries are corpus vectors that are *not yet in the index*: fresh queries from the corpus's
    own distribution. (A corpus vector already indexed is far too easy for a graph index, which
    walks straight to it and its linked neighbours.) Training sees every vector."""
    if plan.exact:
        return build_faiss(plan, vectors, ids), {**EXACT_RECORD, "k": k}
    hold = holdout(len(vectors))
    keep = np.ones(len(vectors), dtype=bool)
    keep[hold] = False
    index = build_faiss(plan, vectors[keep], ids[keep], train=vectors)
    record = _tune(index, plan, vectors[keep], ids[keep], vectors[hold], k)
    index.add_with_ids(vectors[hold], ids[hold])
    return index, record


def recheck(index: faiss.Index, plan: IndexPlan, vectors: np.ndarray, ids: np.ndarray, k: int) -> dict[str, Any]:
    """build_checked's measurement for an index that already holds every vector (after an update):
    the held-out vectors are removed, used as queries, and added back."""
    if plan.exact:
        return {**EXACT_RECORD, "k": k}
    hold = holdout(len(vectors))
    keep = np.ones(len(vectors), dtype=bool)
    keep[hold] = False
    index.remove_ids(ids[hold])
    record = _tune(index, plan, vectors[keep], ids[keep], vectors[hold], k)
    index.add_with_ids(vectors[hold], ids[hold])
    return record
