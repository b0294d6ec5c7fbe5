"""Build (or update) an index folder from a knowledge spec: documents -> chunks -> vectors -> FAISS + docstore.

A full build embeds what the cache lacks, builds the index the spec (or `auto`) asks for, and
measures recall against exact search. An update (`previous=`) diffs chunks by id and
embedding hash against the previous folder and touches only what changed: `remove_ids` for
chunks that disappeared or changed, `add_with_ids` for new ones. Index types that cannot
remove ids (HNSW, refined IVF-PQ), or an IVF whose corpus moved by more than a fifth (its
trained centroids would drift from a rebuild's), are rebuilt from cached vectors instead;
index.json says which happened and why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from components.spec import KnowledgeSpec
from vectorstore import index_shards
from vectorstore.chunking import Chunk, chunk_documents
from vectorstore.convert import ConversionStats
from vectorstore.docstore import DOCSTORE_FILE, chunk_row, write_docstore
from vectorstore.documents import CHUNKER_VERSION, corpus_hash_of, knowledge_documents
from vectorstore.embedder import Embedder, EmbedderError, EmbeddingCache, load_embedder
from vectorstore.faiss_index import IndexPlan, build_checked, plan_index, recheck, set_params
from vectorstore.persist import FORMAT, INDEX_FILE, IndexIntegrityError, open_index_dir, write_index_dir

Progress = Callable[[str, int, int], None]
EMBED_SLICE = 256  # texts per progress report
RETRAIN_FRACTION = 0.2  # an IVF update that changes more than this share of vectors retrains instead


def default_cache_dir() -> Path:
    home = Path(os.environ.get("ADAPTFLOW_HOME", Path.home() / ".cache" / "adaptflow"))
    return home / "embeddings"


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def _check_chunk_size(knowledge: KnowledgeSpec, embedder: Embedder) -> None:
    if knowledge.chunking.size > embedder.max_tokens:
        raise ValueError(
            f"knowledge.chunking.size is {knowledge.chunking.size} tokens but embedder '{embedder.name}' reads at most "
            f"{embedder.max_tokens}; lower chunking.size to {embedder.max_tokens} or less"
        )


def embed_chunks(
    chunks: list[Chunk], embedder: Embedder, cache: EmbeddingCache, progress: Progress,
) -> tuple[np.ndarray, dict[str, int]]:
    """Vectors for `chunks` (rows aligned): from the cache, else from the embedder (then cached)."""
    hashes = [c.embed_hash for c in chunks]
    found = cache.get(hashes)
    cached = len(found)
    todo = {c.embed_hash: c for c in chunks if c.embed_hash not in found}
    pending = sorted(todo.items(), key=lambda kv: len(kv[1].embed_text))  # similar lengths batch with less padding
    progress("embed", 0, len(pending))
    for start in range(0, len(pending), EMBED_SLICE):
        part = pending[start:start + EMBED_SLICE]
        vectors = embedder.encode([c.embed_text for _, c in part])
        cache.put([h for h, _ in part], vectors)
        found.update({h: v for (h, _), v in zip(part, vectors, strict=True)})
        progress("embed", min(start + EMBED_SLICE, len(pending)), len(pending))
    matrix = np.stack([found[h] for h in hashes]).astype(np.float32) if chunks else np.zeros((0, embedder.dim), np.float32)
    return matrix, {"embedded": len(pending), "cached": cached}


def _previous(previous: Path, embedder: Embedder, knowledge: KnowledgeSpec, plan: IndexPlan) -> tuple[Any, str]:
    """(opened previous folder or None, why it can or cannot be updated in place)."""
    try:
        info, index, rows = open_index_dir(previous)
    except (IndexIntegrityError, OSError) as exc:
        return None, f"previous index unusable ({exc}); full build"
    if info["embedder"]["weights_hash"] != embedder.weights_hash:
        return None, "previous index used another embedder; full build"
    chunking = {"size": knowledge.chunking.size, "overlap": knowledge.chunking.overlap, "chunker": CHUNKER_VERSION}
    if info["chunking"] != chunking:
        return None, "previous index used other chunking; full build"
    if info["index"].get("shards", 1) != plan.shards:
        return None, f"shard count changed ({info['index'].get('shards', 1)} -> {plan.shards}); full build"
    if info["index"]["factory"] != plan.factory:
        return None, f"index type changed ({info['index']['factory']} -> {plan.factory}); full build"
    return (info, index, rows), "incremental"


def _update(
    prev: tuple[dict, faiss.Index, dict], chunks: list[Chunk], plan: IndexPlan, embedder: Embedder,
    cache: EmbeddingCache, progress: Progress,
) -> tuple[faiss.Index | None, dict[str, Any], dict[str, int]]:
    """Apply the chunk diff to the previous index; None when it must be rebuilt instead."""
    _, index, rows = prev
    new = {c.chunk_id: c for c in chunks}
    stale = [i for i, r in rows.items() if i not in new or r["embed_hash"] != new[i].embed_hash]
    fresh = [c for c in chunks if c.chunk_id not in rows or rows[c.chunk_id]["embed_hash"] != c.embed_hash]
    old_docs, new_docs = {r["doc_id"] for r in rows.values()}, {c.doc_id for c in chunks}
    changed_docs = {c.doc_id for c in fresh} | {rows[i]["doc_id"] for i in stale}
    update = {
        "documents_added": len(new_docs - old_docs), "documents_removed": len(old_docs - new_docs),
        "documents_changed": len((changed_docs & old_docs) & new_docs),
        "chunks_removed": len(stale), "chunks_added": len(fresh),
    }
    vectors, counts = embed_chunks(fresh, embedder, cache, progress)
    trained = "IVF" in plan.factory
    if trained and len(stale) + len(fresh) > RETRAIN_FRACTION * max(len(rows), 1):
        return None, {**update, "mode": "full", "reason": f"more than {RETRAIN_FRACTION:.0%} of vectors changed: retrained"}, counts
    try:
        index.remove_ids(np.asarray(stale, dtype=np.int64))  # also probes support when nothing is stale
    except RuntimeError:
        return None, {**update, "mode": "full", "reason": f"{plan.factory} cannot remove ids: rebuilt from cached vectors"}, counts
    if fresh:
        index.add_with_ids(vectors, np.asarray([c.chunk_id for c in fresh], dtype=np.int64))
    set_params(index, plan.params)
    counts = {**counts, "kept": len(chunks) - len(fresh)}  # untouched vectors of unchanged chunks
    return index, {**update, "mode": "incremental", "reason": "remove_ids + add_with_ids"}, counts


def build_index(
    knowledge: KnowledgeSpec, out_dir: Path, *, embedder: Embedder | None = None, cache_dir: Path | None = None,
    previous: Path | None = None, progress: Progress | None = None, tune_rows: list[tuple[str, list[str]]] | None = None,
    tune_min: int | None = None,
) -> dict[str, Any]:
    """Write index.faiss, docstore.jsonl and index.json into out_dir (atomically); return index.json.

    With `tune_rows` (question, gold doc ids), settings the spec leaves unset are chosen first by
    measurement on a held-out third of them (vectorstore.tune; at least `tune_min`, default TUNE_MIN, else the
    defaults stay and index.json records why under `tuning_skipped`); index.json records the grid and choice."""
    started = time.perf_counter()
    report = progress or _no_progress
    embedder = embedder or load_embedder(knowledge.embedder)
    embedder.probe  # noqa: B018 - computed now, so that it is not counted as build time
    tuning = None
    if tune_rows:
        from components.spec.evalset import TUNE_MIN
        from vectorstore.tune import tune_retrieval

        knowledge, tuning = tune_retrieval(knowledge, tune_rows, embedder, cache_dir, build_index=build_index,
                                           min_questions=TUNE_MIN if tune_min is None else tune_min)
    loaded = time.perf_counter()
    _check_chunk_size(knowledge, embedder)
    conversions = ConversionStats()
    docs = knowledge_documents(knowledge, stats=conversions)
    report("load", len(docs), len(docs))
    chunks = chunk_documents(docs, embedder.token_offsets, knowledge.chunking)
    report("chunk", len(chunks), len(chunks))
    if not chunks:
        raise ValueError(f"{knowledge.documents}: the documents contain no text to index; add text to knowledge.documents")
    cache = EmbeddingCache(cache_dir if cache_dir is not None else default_cache_dir(), embedder)
    plan = plan_index(knowledge.index, len(chunks), embedder.dim)
    ids = np.asarray([c.chunk_id for c in chunks], dtype=np.int64)

    index, update, counts, prev = None, {"mode": "full", "reason": "no previous index"}, {}, None
    if previous is not None:
        prev, reason = _previous(Path(previous), embedder, knowledge, plan)
        update["reason"] = reason
        if prev is not None:
            index, update, counts = _update(prev, chunks, plan, embedder, cache, report)
    vectors = None
    if index is None or not plan.exact:  # a (re)build, or a recall check, needs every vector
        vectors, more = embed_chunks(chunks, embedder, cache, report)
        already = counts.get("embedded", 0)  # embedded by the update just before: now cache hits here
        counts = {**counts, "embedded": already + more["embedded"], "cached": max(0, more["cached"] - already)}
    if conversions.converted or conversions.cached:  # PDF, DOCX, ... files: how many were converted this time
        counts = {**counts, "converted": conversions.converted, "conversions_cached": conversions.cached}
    report("index", 0, len(chunks))
    if index is None:
        index, recall = build_checked(plan, vectors, ids, knowledge.top_k)
    else:
        recall = recheck(index, plan, vectors, ids, knowledge.top_k)
    report("index", len(chunks), len(chunks))
    params = recall["params"] or plan.params

    info = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "embedder": embedder.info(),
        "chunking": {"size": knowledge.chunking.size, "overlap": knowledge.chunking.overlap, "chunker": CHUNKER_VERSION},
        "index": {"kind": plan.kind, "factory": plan.factory, "metric": "inner_product", "params": params,
                  "build": plan.build, "reason": plan.reason, **({"shards": plan.shards} if plan.shards > 1 else {}), "spec": knowledge.index.model_dump(mode="json")},
        "retrieval": {"top_k": knowledge.top_k, "hybrid": knowledge.hybrid},
        "corpus_hash": corpus_hash_of(docs, knowledge),
        "counts": {"documents": len(docs), "chunks": len(chunks), "vectors": int(index.ntotal), **counts},
        "recall": recall,
        "update": update,
        "documents": {d.doc_id: d.content_hash for d in docs},
        "versions": {"faiss": faiss.__version__},
    }
    if tuning is not None:
        info["tuning_skipped" if "skipped" in tuning else "tuning"] = tuning
    rows = [chunk_row(c) for c in chunks]
    report("write", 0, 1)
    info["build_seconds"] = round(time.perf_counter() - loaded, 3)  # without loading the embedder:
    info["embedder_load_seconds"] = round(loaded - started, 3)  # that is once per process
    info = write_index_dir(Path(out_dir), {
        **index_shards.writers(index, INDEX_FILE),
        DOCSTORE_FILE: lambda p: write_docstore(p, rows),
    }, info)
    report("write", 1, 1)
    return info


__all__ = ["build_index", "default_cache_dir", "embed_chunks", "EmbedderError"]
