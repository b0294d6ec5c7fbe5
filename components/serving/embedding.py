"""Questions of concurrent requests embedded together: the retrieval half of batching.

`Retriever.search` embeds its one question with `embedder.encode([q])`. A `BatchingEmbedder` stands in
for the embedder: the first caller waits `window_s` for others, encodes every waiting question in one call
and hands each caller its row. Calls are serialized either way (fast tokenizers are not thread-safe).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class _Pending:
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None
    error: BaseException | None = None


class BatchingEmbedder:
    def __init__(self, inner, window_s: float = 0.004, max_batch: int = 64):
        self.inner, self.window_s, self.max_batch = inner, window_s, max_batch
        self.lock = threading.RLock()  # one encode (or tokenizer use) at a time
        self._state = threading.Lock()  # guards _waiting and _leading
        self._waiting: list[_Pending] = []
        self._leading = False
        self.batches: list[int] = []  # sizes of the batches encoded (tests, and a glance at how well it batches)

    def __getattr__(self, name):  # everything but encode is the embedder's own
        return getattr(self.inner, name)

    def encode(self, texts: list[str], *args, **kwargs) -> np.ndarray:
        if len(texts) != 1 or args or kwargs:
            with self.lock:
                return self.inner.encode(texts, *args, **kwargs)
        mine = _Pending(texts[0])
        with self._state:
            self._waiting.append(mine)
            lead, self._leading = not self._leading, True
        if lead:  # the first caller of a moment encodes for everyone until no one waits
            time.sleep(self.window_s)
            self._lead()
        mine.done.wait()
        if mine.error is not None:
            raise mine.error
        return mine.vector[None, :]

    def _lead(self) -> None:
        while True:
            with self._state:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch:]
                if not batch:
                    self._leading = False
                    return
            try:
                with self.lock:
                    vectors = self.inner.encode([p.text for p in batch])
                self.batches.append(len(batch))
            except Exception:  # noqa: BLE001 - one bad question must not fail the others: each alone
                vectors = [self._alone(p) for p in batch]
            for p, v in zip(batch, vectors, strict=True):
                p.vector = v
                p.done.set()

    def _alone(self, pending: _Pending) -> np.ndarray | None:
        try:
            with self.lock:
                return self.inner.encode([pending.text])[0]
        except Exception as exc:  # noqa: BLE001 - handed to that caller
            pending.error = exc
            return None


_WRAPPED: dict[int, BatchingEmbedder] = {}
_WRAP_LOCK = threading.Lock()


def batching(embedder) -> BatchingEmbedder:
    """The one batching stand-in for this (process-wide cached) embedder."""
    if isinstance(embedder, BatchingEmbedder):
        return embedder
    with _WRAP_LOCK:
        key = id(embedder)
        if key not in _WRAPPED:
            _WRAPPED[key] = BatchingEmbedder(embedder)
        return _WRAPPED[key]
