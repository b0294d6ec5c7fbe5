"""Embed a large corpus on Dask through Prefect's DaskTaskRunner (prefect-dask), before the index is built.

`adaptflow index SPEC --dask local` starts a `distributed.LocalCluster` (one process per worker,
`--dask-threads` threads each); `--dask tcp://scheduler:8786` (or `ADAPTFLOW_DASK=...`) uses a
running cluster whose workers can load the same embedder. Each shard of uncached chunks is one
Prefect task run on a worker; the flow writes each shard's vectors to the embedding cache as soon
as it completes, so a killed run resumes with the unfinished shards only. The index build that
follows (`vectorstore.build_index`) then reads every vector from the cache: the index stays
`auto` and its recall check is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

from components.spec import KnowledgeSpec
from vectorstore.chunking import chunk_documents
from vectorstore.documents import knowledge_documents
from vectorstore.embedder import EmbeddingCache, load_embedder
from vectorstore.shards import SHARD_SIZE, Shard, embed_shard, pending_shards

LOCAL = "local"  # `--dask local`: a LocalCluster on this machine


def task_runner(address: str, workers: int, threads: int):
    from prefect_dask import DaskTaskRunner

    if address != LOCAL:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": threads, "processes": True,
                                          "dashboard_address": ":0"})


@task(name="embed-shard", cache_policy=NONE, retries=1)
def embed_shard_task(embedder_name: str, shard: Shard, threads: int) -> np.ndarray:
    return embed_shard(embedder_name, shard.texts, threads)


@flow(name="embed-corpus", log_prints=True)
def embed_corpus(knowledge: KnowledgeSpec, cache_dir: str, threads: int = 1, shard_size: int = SHARD_SIZE,
                 workers: int = 1) -> dict[str, int]:
    """Fill the embedding cache for the spec's chunks, one task run per shard of uncached chunks.

    The shards are cut here, inside the flow, not passed in: a flow run's parameters are stored by the
    Prefect API, which refuses more than 512 KB (a 3,000-chunk corpus's texts already exceed it).
    """
    embedder = load_embedder(knowledge.embedder)
    chunks = chunk_documents(knowledge_documents(knowledge), embedder.token_offsets, knowledge.chunking)
    cache = EmbeddingCache(Path(cache_dir), embedder)
    shards = pending_shards(chunks, cache, shard_size, workers)  # as many (even) shards per worker
    unique = len({c.embed_hash for c in chunks})
    futures = {embed_shard_task.submit(knowledge.embedder, s, threads): s for s in shards}
    for done, future in enumerate(as_completed(list(futures)), 1):
        shard = futures[future]
        cache.put(shard.hashes, future.result())  # at once: a killed run keeps every finished shard
        print(f"shard {shard.number}: {len(shard.hashes)} vectors cached ({done}/{len(shards)})")
    embedded = sum(len(s.hashes) for s in shards)
    return {"chunks": len(chunks), "cached": unique - embedded, "shards": len(shards), "embedded": embedded}


def embed_on_dask(knowledge: KnowledgeSpec, cache_dir: Path, address: str, *, workers: int | None = None,
                  threads: int = 1, shard_size: int = SHARD_SIZE) -> dict[str, Any]:
    """Run `embed_corpus` on Dask (a LocalCluster for `address` 'local'); return what was embedded and cached."""
    workers = workers or max(1, (os.cpu_count() or 1) // threads)
    with api_for_workers():
        runner = task_runner(address, workers, threads)
        return embed_corpus.with_options(task_runner=runner)(knowledge, str(cache_dir), threads, shard_size, workers)


@contextmanager
def api_for_workers() -> Iterator[None]:
    """Give worker processes this process's Prefect API.

    Without an API URL, Prefect starts a temporary server in each process that needs one: every
    Dask worker would start its own (~1 min each on 2 cores) and record its task runs there. So the
    temporary server is started here, once, and its URL goes to the workers through the environment
    (LocalCluster workers inherit it; a remote cluster's workers need PREFECT_API_URL set themselves).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        url = server.api_url
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
