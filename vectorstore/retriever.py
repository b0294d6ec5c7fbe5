"""Query an index folder: dense search, optional BM25 fusion (reciprocal rank fusion) and MMR.

`Retriever.open` verifies the folder (sha256 of every file, ids 1:1 between FAISS and the
docstore) and that the query-time embedder is the build-time one, then answers
`search(query, k)` with `Hit`s. Hybrid search fuses the dense ranking with a BM25 ranking
(`bm25s`, built in memory from the docstore when first needed); MMR re-ranks candidates
to trade relevance against redundancy. Which of these helps is measured, not assumed:
see docs/docstore.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vectorstore.convert import locator_label
from vectorstore.embedder import Embedder, check_compatible, load_embedder
from vectorstore.persist import INFO_FILE, open_index_dir

RRF_K = 60  # the constant of Cormack et al. (2009); ranks below it barely matter
CANDIDATES = 5  # each ranking contributes k * CANDIDATES candidates (at least 20) to fusion and MMR


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    doc_id: str
    title: str
    text: str
    score: float  # cosine similarity for dense search; the fused / MMR score otherwise
    start: int = 0  # character span in the document
    end: int = 0
    position: int = 0  # chunk number within the document
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def locator(self) -> str:
        """Where in its file the chunk sits, for a citation: 'page 2', 'slide 3', 'section "Setup"', or ''."""
        return locator_label(self.metadata)


def rrf(rankings: list[list[int]], k0: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: sum of 1/(k0 + rank) over the rankings an id appears in, best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking, start=1):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k0 + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: positions into `candidates`, picking lam*sim(q) - (1-lam)*max sim(picked)."""
    relevance = candidates @ query
    similarity = candidates @ candidates.T
    picked: list[int] = []
    left = list(range(len(candidates)))
    while left and len(picked) < k:
        if picked:
            redundancy = similarity[np.ix_(left, picked)].max(axis=1)
        else:
            redundancy = np.zeros(len(left))
        best = int(np.argmax(lam * relevance[left] - (1 - lam) * redundancy))
        picked.append(left.pop(best))
    return picked


class Retriever:
    def __init__(self, index_dir: Path, info: dict[str, Any], index: faiss.Index, rows: dict[int, dict[str, Any]],
                 embedder: Embedder, hybrid: bool, mmr_lambda: float | None):
        self.index_dir, self.info, self.index, self.rows = index_dir, info, index, rows
        self.embedder, self.hybrid, self.mmr_lambda = embedder, hybrid, mmr_lambda
        self._bm25: Any = None
        self._bm25_ids: list[int] = []
        self._lock = threading.Lock()  # the BM25 index is built once, on first use, by one thread

    @classmethod
    def open(cls, index_dir: Path, embedder: Embedder | None = None, verify: bool = True, *,
             hybrid: bool | None = None, mmr_lambda: float | None = None) -> Retriever:
        """Open a verified index folder. `hybrid` defaults to what the spec asked for at build time."""
        index_dir = Path(index_dir)
        info, index, rows = open_index_dir(index_dir, verify=verify)
        embedder = embedder or load_embedder(info["embedder"]["name"])
        check_compatible(info["embedder"], embedder, str(index_dir / INFO_FILE))
        use_hybrid = info["retrieval"]["hybrid"] if hybrid is None else hybrid
        return cls(index_dir, info, index, rows, embedder, use_hybrid, mmr_lambda)

    def __len__(self) -> int:
        return len(self.rows)

    def _hit(self, cid: int, score: float) -> Hit:
        r = self.rows[cid]
        return Hit(cid, r["doc_id"], r["title"], r["text"], float(score), r["start"], r["end"], r["position"], r["metadata"])

    def dense(self, qvec: np.ndarray, n: int) -> list[tuple[int, float]]:
        scores, ids = self.index.search(qvec[None, :], min(n, self.index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def lexical(self, query: str, n: int) -> list[tuple[int, float]]:
        import bm25s

        with self._lock:
            if self._bm25 is None:
                self._bm25_ids = sorted(self.rows)
                texts = [f"{self.rows[i]['title']}\n{self.rows[i]['text']}" for i in self._bm25_ids]
                bm25 = bm25s.BM25()
                bm25.index(bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False), show_progress=False)
                self._bm25 = bm25
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        docs, scores = self._bm25.retrieve(tokens, k=min(n, len(self._bm25_ids)), show_progress=False)
        return [(self._bm25_ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def _vectors(self, ids: list[int]) -> np.ndarray:
        try:
            return np.stack([self.index.reconstruct(i) for i in ids])
        except RuntimeError:  # IVF without a direct map: embed the candidates again
            return self.embedder.encode([self._embed_text(i) for i in ids])

    def _embed_text(self, cid: int) -> str:
        from vectorstore.docstore import row_chunk

        return row_chunk(self.rows[cid]).embed_text

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """The k best chunks for `query` (default: the spec's top_k), best first."""
        k = k or self.info["retrieval"]["top_k"]
        qvec = self.embedder.encode([query])[0]
        pool = max(20, k * CANDIDATES) if (self.hybrid or self.mmr_lambda is not None) else k
        ranked = self.dense(qvec, pool)
        if self.hybrid:
            ranked = rrf([[i for i, _ in ranked], [i for i, _ in self.lexical(query, pool)]])
        if self.mmr_lambda is not None and ranked:
            ids = [i for i, _ in ranked]
            order = mmr(qvec, self._vectors(ids), k, self.mmr_lambda)
            ranked = [ranked[p] for p in order]
        return [self._hit(i, s) for i, s in ranked[:k]]
