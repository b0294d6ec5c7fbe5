"""Per-shard FAISS indexes queried as one through `faiss.IndexShards`, for corpora above one machine's budget.

`auto` moves from Flat to HNSW to IVF-PQ as the corpus grows past `memory_budget_mb`. When even the
IVF-PQ codes (plus their int64 ids) exceed the budget, the corpus is cut into just enough shards
that each one's index fits it: each shard is trained and filled on its own vectors, so one shard's
build never needs more than one machine's budget, and each is written to its own file
(`index-<i>.faiss`, hashed in index.json like every other file). Queries go through
`faiss.IndexShards`, which searches every shard and merges the top-k by score; the recall check
against exact search on held-out vectors (faiss_index.build_checked) measures the merged result.

The shards here are loaded into one query process, so its memory is the sum of theirs: what this
buys is a build that fits a machine per shard, and files a server per shard can hold; serving
shards from other machines is FAISS's contrib client/server (docs/scale.md), not ours.
Sharded indexes cannot remove ids, so an update rebuilds from cached vectors (build.py says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

ID_BYTES = 8  # one int64 id per vector, in the IDMap or the inverted lists


def shard_file(i: int) -> str:
    return f"index-{i}.faiss"


def shard_count(n: int, bytes_per_vector: int, budget: int) -> int:
    """The fewest shards whose share of n vectors fits `budget` bytes each (1 when it all fits)."""
    return max(1, math.ceil(n * bytes_per_vector / budget))


def shard_positions(n: int, shards: int) -> list[np.ndarray]:
    """Contiguous, even runs of positions: shard sizes differ by at most one vector."""
    return np.array_split(np.arange(n), shards)


def shards_of(index: faiss.Index) -> list[faiss.Index] | None:
    """The sub-indexes of an IndexShards, or None for any other index."""
    top = faiss.downcast_index(index)
    if not isinstance(top, faiss.IndexShards):
        return None
    return [faiss.downcast_index(top.at(i)) for i in range(top.count())]


def combine(parts: list[faiss.Index], dim: int) -> faiss.Index:
    """One IndexShards over `parts` (ids kept as given; FAISS's Python wrapper keeps the parts alive)."""
    merged = faiss.IndexShards(dim, False, False)  # not threaded: the query path already runs one per request
    for part in parts:
        merged.add_shard(part)
    return merged


def build_shards(count: int, vectors: np.ndarray, ids: np.ndarray, train: np.ndarray,
                 build_one: Callable[[np.ndarray, np.ndarray, np.ndarray], faiss.Index]) -> faiss.Index:
    """`count` indexes, each filled with its own run of `vectors` (and `ids`) and trained on its own run of
    `train` (so no shard's build holds more than its share), combined by IndexShards."""
    runs = zip(shard_positions(len(vectors), count), shard_positions(len(train), count), strict=True)
    parts = [build_one(vectors[pos], ids[pos], train[tpos]) for pos, tpos in runs]
    return combine(parts, vectors.shape[1])


def writers(index: faiss.Index, single_file: str) -> dict[str, Callable[[Path], None]]:
    """What persist.write_index_dir writes: one file for a plain index, one per shard for IndexShards."""
    parts = shards_of(index)
    if parts is None:
        return {single_file: lambda p: faiss.write_index(index, str(p))}
    return {shard_file(i): (lambda p, part=part: faiss.write_index(part, str(p))) for i, part in enumerate(parts)}


def read_shards(index_dir: Path, count: int, dim: int, read: Callable[[Path], faiss.Index]) -> faiss.Index:
    parts = [read(Path(index_dir) / shard_file(i)) for i in range(count)]
    return combine(parts, dim)
