"""embed_dask_speedup: embedding N chunks on a 2-worker Dask LocalCluster / in one process, same shards.

    ADAPTFLOW_BENCH_CHUNKS=20000 .venv/bin/python -m bench.embed_dask

The built-in MiniLM embedder; synthetic chunks of 40-120 words. The baseline embeds the same
shards one after another in this process with 1 torch thread; the Dask run uses 2 worker
processes x 1 thread (prefect-dask's DaskTaskRunner through flows/embed_dask.py), and its wall
time includes starting the cluster and loading the embedder in each worker. Vectors are compared
row by row (the same shards mean the same batches, so they should be identical).
"""

from __future__ import annotations

import hashlib
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

    from flows.embed_dask import api_for_workers, embed_corpus, task_runner
    from vectorstore.embedder import EmbeddingCache, load_embedder
    from vectorstore.shards import Shard, embed_shard

    n = int(os.environ.get("ADAPTFLOW_BENCH_CHUNKS", "20000"))
    size = 1024
    name = "all-minilm-l6-v2"
    corpus = sorted(texts(n), key=len)
    hashes = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in corpus]
    shards = [Shard(i, hashes[s:s + size], corpus[s:s + size]) for i, s in enumerate(range(0, n, size))]

    start = time.perf_counter()
    torch.set_num_threads(1)
    base = np.concatenate([embed_shard(name, s.texts, 1) for s in shards])
    one = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        with api_for_workers():
            embed_corpus.with_options(task_runner=task_runner("local", 2, 1))(name, shards, cache_dir, 1)
        dask = time.perf_counter() - start
        found = EmbeddingCache(Path(cache_dir), load_embedder(name)).get(hashes)
    got = np.stack([found[h] for h in hashes])
    return {"embed_dask_speedup": round(one / dask, 2), "chunks": n, "one_process_s": round(one, 1),
            "dask_2x1_s": round(dask, 1), "max_abs_diff": float(np.abs(got - base).max()),
            "cores": os.cpu_count(), "threads_per_worker": 1, "load_average_1m": round(os.getloadavg()[0], 1)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
