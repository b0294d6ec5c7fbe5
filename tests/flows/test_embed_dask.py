"""Embedding on a real Dask LocalCluster through Prefect's DaskTaskRunner: killed mid-run, resumed from the cache.

`adaptflow index --dask local` runs in its own process group (scheduler, nannies, workers); once
some shards are in the embedding cache the whole group is SIGKILLed. The resumed build embeds
exactly the chunks no finished shard covered, and every vector equals the one-process encode.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.spec import KnowledgeSpec
from vectorstore.build import build_index
from vectorstore.chunking import chunk_documents
from vectorstore.documents import knowledge_documents
from vectorstore.embedder import EmbeddingCache, load_embedder
from vectorstore.shards import pending_shards

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def corpus(root: Path, embedder_dir: Path) -> Path:
    docs = root / "data" / "docs"
    docs.mkdir(parents=True)
    for i in range(40):
        (docs / f"d{i}.md").write_text(" ".join(f"pier{i} tide{j} harbor mill choir" for j in range(60)))
    spec = root / "spec.yaml"
    spec.write_text(f"name: dask-lore\ngoal: knowledge\nknowledge:\n  documents: data/docs/\n"
                    f"  chunking: {{size: 32, overlap: 8}}\n  embedder: \"{embedder_dir}\"\n  allow_outside_workspace: true\n")
    return spec


def test_killed_dask_embedding_resumes_from_finished_shards(tmp_path: Path, tiny_embedder_dir: Path, prefect_api) -> None:
    from prefect.settings import PREFECT_API_URL

    spec = corpus(tmp_path / "ws", tiny_embedder_dir)
    home = tmp_path / "home"
    env = {**os.environ, "ADAPTFLOW_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "flows.cli", "index", str(spec), "--workspace", str(tmp_path / "ws"), "--dask", "local",
           "--dask-workers", "2", "--dask-shard-size", "30", "--out", str(tmp_path / "index")]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while len(list(home.glob("embeddings/*/shard-*.safetensors"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard reached the cache"
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, the scheduler and every worker at once
    out = proc.communicate()[0].decode()
    assert proc.returncode in (-signal.SIGKILL, 0), out[-3000:]

    embedder = load_embedder(str(tiny_embedder_dir))
    knowledge = KnowledgeSpec.model_validate({"documents": str(tmp_path / "ws/data/docs"), "embedder": str(tiny_embedder_dir),
                                              "chunking": {"size": 32, "overlap": 8}}, context={"check_exists": False})
    chunks = chunk_documents(knowledge_documents(knowledge), embedder.token_offsets, knowledge.chunking)
    unique = {c.embed_hash: c.embed_text for c in chunks}
    cache = EmbeddingCache(home / "embeddings", embedder)
    left = sum(len(s.hashes) for s in pending_shards(chunks, cache, 30))
    finished = len(unique) - left
    planned = pending_shards(chunks, EmbeddingCache(home / "fresh", embedder), 30, workers=2)  # what the run cut
    assert len(planned) % 2 == 0 and max(len(s.hashes) for s in planned) - min(len(s.hashes) for s in planned) <= 1
    done = set(cache.get(list(unique)))
    assert finished >= 2 * min(len(s.hashes) for s in planned)
    assert all(set(s.hashes) <= done or not set(s.hashes) & done for s in planned)  # whole shards only

    info = build_index(knowledge, tmp_path / "resumed", embedder=embedder, cache_dir=home / "embeddings")
    assert (info["counts"]["embedded"], info["counts"]["cached"]) == (left, finished)
    cached = EmbeddingCache(home / "embeddings", embedder).get(list(unique))  # a fresh scan: the build added shards
    direct = embedder.encode(list(unique.values()))
    assert np.abs(np.stack([cached[h] for h in unique]) - direct).max() <= 1e-5
