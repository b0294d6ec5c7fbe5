"""Embedding a large corpus in shards, so that workers elsewhere (Dask, flows/embed_dask.py) can do it.

Only the chunks the embedding cache lacks are cut into shards, as many per worker, of even size
(the embedder sorts each shard's texts by length, so similar lengths still pad less). A worker embeds one shard with `embed_shard` and hands the vectors back; the
caller writes each finished shard to the cache at once, so a killed run resumes without
embedding the finished shards again. `build_index` then finds every vector in the cache.
No scheduler import here: this module is plain functions a Dask, Ray or Prefect task can call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vectorstore.chunking import Chunk
from vectorstore.embedder import EmbeddingCache, load_embedder

SHARD_SIZE = 1024  # texts per shard: ~10 s of MiniLM on one core, so a killed run loses little


@dataclass(frozen=True)
class Shard:
    number: int
    hashes: list[str]
    texts: list[str]


def pending_shards(chunks: list[Chunk], cache: EmbeddingCache, size: int = SHARD_SIZE, workers: int = 1) -> list[Shard]:
    """The chunks without a cached vector, deduplicated by embedding hash, cut into shards of at most `size` texts.

    The shard count is rounded up to a multiple of `workers` and the texts are dealt out by length,
    round-robin, so every worker gets the same number of shards of the same size and about the same
    cost: 1,500 texts on 2 workers make 2 shards of 750, not 1,024 + 476 (docs/scale.md)."""
    found = cache.get([c.embed_hash for c in chunks])
    todo = {c.embed_hash: c.embed_text for c in chunks if c.embed_hash not in found}
    ordered = sorted(todo.items(), key=lambda kv: len(kv[1]))
    if not ordered:
        return []
    count = min(len(ordered), math.ceil(math.ceil(len(ordered) / size) / workers) * workers)
    return [Shard(i, [h for h, _ in ordered[i::count]], [t for _, t in ordered[i::count]]) for i in range(count)]


def embed_shard(embedder_name: str, texts: list[str], threads: int | None = None) -> np.ndarray:
    """float32 vectors for `texts` with the embedder `embedder_name` (loaded once per worker process)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return load_embedder(embedder_name).encode(texts)
