"""`GET /metrics`: Prometheus counters, gauges and histograms of one server (its own registry)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self, queue_depth, active_rows):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("adaptflow_requests", "Requests answered, by endpoint, system and HTTP status",
                                ["endpoint", "system", "status"], registry=r)
        self.latency = Histogram("adaptflow_request_seconds", "Time from request to last byte", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("adaptflow_time_to_first_token_seconds", "Time from request to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("adaptflow_prompt_tokens", "Prompt tokens, by system", ["system"], registry=r)
        self.generated = Counter("adaptflow_generated_tokens", "Generated tokens, by system", ["system"], registry=r)
        self.batch_rows = Histogram("adaptflow_batch_size", "Rows in each forward pass", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.adapter_events = Counter("adaptflow_adapter_events", "Systems loaded, evicted (LRU) or reloaded "
                                      "after their files changed", ["event"], registry=r)
        Gauge("adaptflow_queue_depth", "Rows waiting for a place in a batch", registry=r).set_function(queue_depth)
        Gauge("adaptflow_active_rows", "Rows being generated", registry=r).set_function(active_rows)
        Gauge("adaptflow_tokens_per_second", "Generated tokens per second over the last 10 s",
              registry=r).set_function(self.tokens_per_second)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def on_step(self, rows: int, tokens: int) -> None:
        self.batch_rows.observe(rows)
        with self._lock:
            self._recent.append((time.monotonic(), tokens))

    def tokens_per_second(self, window: float = 10.0) -> float:
        cutoff = time.monotonic() - window
        with self._lock:
            while self._recent and self._recent[0][0] < cutoff:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / window

    def answered(self, endpoint: str, system: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, system, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
