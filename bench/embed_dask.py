"""embed_dask_speedup: embedding N chunks on a 2-worker Dask LocalCluster / in one process, same shards.

    ADAPTFLOW_BENCH_CHUNKS=20000 .venv/bin/python -m bench.embed_dask

The built-in MiniLM embedder; synthetic chunks of 40-120 words. The baseline embeds the same
shards one after another in this process with 1 torch thread; the Dask run uses 2 worker
processes x 1 thread (prefect-dask's DaskTaskRunner through flows/embed_dask.py), and its wall
time includes starting the cluster and loading the embedder in each worker. Starting Prefect's
temporary API server (what `adaptflow ui` or PREFECT_API_URL already provides) is timed apart:
`speedup_with_api_start` counts it too. Shards: as many per worker, of even size (vectorstore/shards.py). Vectors are compared
row by row (the same shards mean the same batches, so they should be identical).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("harbor tide mill choir turbine founded ledger river copper wheel flood pier parcel invoice "
         "refund account login export courier settings charge network signal archive").split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"chunk {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) for i in range(n)]


def run() -> dict:
    import numpy as np
    import torch

    from components.spec import KnowledgeSpec
    from flows.embed_dask import api_for_workers, embed_on_dask
    from vectorstore.chunking import chunk_documents
    from vectorstore.documents import knowledge_documents
    from vectorstore.embedder import EmbeddingCache, load_embedder
    from vectorstore.shards import SHARD_SIZE, embed_shard, pending_shards

    n = int(os.environ.get("ADAPTFLOW_BENCH_CHUNKS", "20000"))
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for i, text in enumerate(texts(n)):  # one chunk per document (under 200 tokens each)
            (docs / f"d{i:06d}.txt").write_text(text)
        knowledge = KnowledgeSpec.model_validate({"documents": str(docs), "embedder": "all-minilm-l6-v2",
                                                  "chunking": {"size": 200, "overlap": 0}}, context={"check_exists": False})
        embedder = load_embedder(knowledge.embedder)
        chunks = chunk_documents(knowledge_documents(knowledge), embedder.token_offsets, knowledge.chunking)
        shards = pending_shards(chunks, EmbeddingCache(None, embedder), SHARD_SIZE, workers=2)  # what Dask will get

        start = time.perf_counter()
        torch.set_num_threads(1)
        base = {h: v for s in shards for h, v in zip(s.hashes, embed_shard(knowledge.embedder, s.texts, 1), strict=True)}
        one = time.perf_counter() - start

        start = time.perf_counter()
        with api_for_workers():  # the Prefect API a running `adaptflow ui` (or PREFECT_API_URL) already provides
            api = time.perf_counter() - start
            start = time.perf_counter()
            done = embed_on_dask(knowledge, Path(tmp) / "cache", "local", workers=2, threads=1)
            dask = time.perf_counter() - start
        found = EmbeddingCache(Path(tmp) / "cache", embedder).get(list(base))
    diff = max(float(np.abs(found[h] - v).max()) for h, v in base.items())
    return {"embed_dask_speedup": round(one / dask, 2), "chunks": len(chunks), "embedded_on_dask": done["embedded"],
            "shards": len(shards), "one_process_s": round(one, 1), "dask_2x1_s": round(dask, 1),
            "prefect_api_start_s": round(api, 1), "speedup_with_api_start": round(one / (dask + api), 2), "max_abs_diff": diff,
            "cores": os.cpu_count(), "threads_per_worker": 1, "load_average_1m": round(os.getloadavg()[0], 1)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
