"""s3_publish_overhead: registering a version on an S3 server / on the local disk, same content, same run.

    .venv/bin/python -m bench.s3_publish

The S3 server is moto's (tests/s3server.py, single-threaded) on 127.0.0.1: it measures the
protocol's request count and bytes, not a real network or real S3's latency. A version is a
realistic one: a LoRA adapter (~1.8 MB, the built-in model's r=8 q,v), an index (8 MB) and eval files.
Each publish has new content (no dedupe). Also timed: the upload alone, to split the gap into
bytes sent vs the lock, server-side copy and manifest requests.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.registry import Registry  # noqa: E402
from components.store.objectstore import ObjectStore  # noqa: E402
from tests.s3server import S3Server  # noqa: E402

FILES = {"adapter/adapter_model.safetensors": 1_800_000, "adapter/adapter_config.json": 900,
         "index/index.faiss": 8_000_000, "index/docstore.jsonl": 400_000, "index/index.json": 3_000,
         "eval/report.json": 5_000, "eval/report.md": 3_000, "eval/loss.png": 40_000}
REPEATS = 5


def staging(root: Path, seed: int) -> Path:
    for rel, size in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(seed.to_bytes(4, "little") + os.urandom(size - 4))
    return root


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp, S3Server() as s3:
        os.environ.update(s3.env, ADAPTFLOW_HOME=f"{tmp}/home")
        url = s3.bucket("bench") + "/registry"
        stages = [staging(Path(tmp) / f"s{i}", i) for i in range(2 * REPEATS + 2)]
        local, remote = Registry(Path(tmp) / "registry"), Registry(url)
        remote.publish("warm", stages[-1], {"metrics": {}})  # the client's first request loads botocore's models
        local.publish("warm", stages[-2], {"metrics": {}})
        disk = [timed(lambda s=s: local.publish("demo", s, {"metrics": {}})) for s in stages[:REPEATS]]
        s3_times = [timed(lambda s=s: remote.publish("demo", s, {"metrics": {}})) for s in stages[REPEATS:2 * REPEATS]]
        store = ObjectStore(url)
        upload = [timed(lambda s=s, i=i: store.upload_tree(s, f"upload-only/{i}")) for i, s in enumerate(stages[:REPEATS])]
        mb = sum(FILES.values()) / 1e6
    d, r, u = statistics.median(disk), statistics.median(s3_times), statistics.median(upload)
    return {"s3_publish_overhead": round(r / d, 2), "local_publish_s": round(d, 3), "s3_publish_s": round(r, 3),
            "s3_upload_only_s": round(u, 3), "s3_after_upload_s": round(r - u, 3), "version_mb": round(mb, 1),
            "files": len(FILES), "repeats": REPEATS}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
