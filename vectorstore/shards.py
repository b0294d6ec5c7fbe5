"""Embedding a large corpus in shards, so that workers elsewhere (Dask, flows/embed_dask.py) can do it.

Only the chunks the embedding cache lacks are cut into shards, shortest texts first (similar
lengths pad less). A worker embeds one shard with `embed_shard` and hands the vectors back; the
caller writes each finished shard to the cache at once, so a killed run resumes without
embedding the finished shards again. `build_index` then finds every vector in the cache.
No scheduler import here: this module is plain functions a Dask, Ray or Prefect task can call.
"""

from __future__ import annotations

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


def pending_shards(chunks: list[Chunk], cache: EmbeddingCache, size: int = SHARD_SIZE) -> list[Shard]:
    """The chunks without a cached vector, deduplicated by embedding hash, cut into shards of `size` texts."""
    found = cache.get([c.embed_hash for c in chunks])
    todo = {c.embed_hash: c.embed_text for c in chunks if c.embed_hash not in found}
    ordered = sorted(todo.items(), key=lambda kv: len(kv[1]))
    return [Shard(i, [h for h, _ in part], [t for _, t in part])
            for i, part in enumerate(ordered[s:s + size] for s in range(0, len(ordered), size))]


def embed_shard(embedder_name: str, texts: list[str], threads: int | None = None) -> np.ndarray:
    """float32 vectors for `texts` with the embedder `embedder_name` (loaded once per worker process)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return load_embedder(embedder_name).encode(texts)
