"""A bounded server (docs/serving.md): prompts past the context answer 400 (retrieved chunks counted), a client
that disconnects stops its generation, per-request timeouts, the queue limit (429 + Retry-After), LRU
eviction past --max-adapters, re-verification of a loaded version whose files changed, /metrics.
Real `adaptflow serve` subprocesses, real HTTP clients that really disconnect."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.flows.serve_helpers import metric, running_server

pytestmark = pytest.mark.integration
HARBOR = "When did the Pellin harbor open?"
A, B = "tiny-both@v1", "tiny-behavior@v1"
LONG = 900  # tokens: prompt + LONG fits the tiny model's 1024-token context


@pytest.fixture(scope="module")
def registry_copy(served_registry, tmp_path_factory) -> Path:
    """A copy this module may tamper with."""
    root = tmp_path_factory.mktemp("bounds") / "registry"
    shutil.copytree(served_registry, root)
    return root


@pytest.fixture(scope="module")
def server(registry_copy, tmp_path_factory):
    """One row at a time: a generation that went on after its client left would hold up the next request."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_server(registry_copy, log, "--max-batch", "1", "--max-tokens-cap", "1000") as url:
        yield url


@pytest.fixture(scope="module")
def tight(registry_copy, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "tight.log"
    with running_server(registry_copy, log, "--max-batch", "1", "--max-queue", "1", "--max-adapters", "1",
                        "--request-timeout", "0.3", "--max-tokens-cap", "1000") as url:
        yield url


def body(model: str, question: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": question}], **extra}


def post(url: str, payload: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(url + path, json=payload, timeout=120)


def long_run(url: str) -> dict:
    """The request the disconnect tests abandon, run to the end: it really generates LONG tokens."""
    done = post(url, body(B, HARBOR, max_tokens=LONG, adaptflow={"retrieval": False})).json()
    assert done["choices"][0]["finish_reason"] == "length" and done["usage"]["completion_tokens"] == LONG
    return done


def wait_idle(url: str, within: float = 10.0) -> float:
    start = time.monotonic()
    while httpx.get(url + "/health", timeout=30).json()["active_rows"]:
        assert time.monotonic() - start < within, "the abandoned generation is still running"
        time.sleep(0.02)
    return time.monotonic() - start


def test_prompt_past_the_context_is_400_counting_retrieved_chunks(server):
    huge = post(server, body(A, "harbor " * 10_000, max_tokens=8))  # ~60 KB, ~10,000 tokens
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    assert "context is 1024 tokens" in huge.json()["error"]["message"]
    question = "harbor " * 600 + HARBOR
    bare = post(server, body(A, question, max_tokens=1, adaptflow={"retrieval": False})).json()["usage"]
    fits = 1024 - bare["prompt_tokens"]  # exactly fills the context without the retrieved chunks
    assert post(server, body(A, question, max_tokens=fits, adaptflow={"retrieval": False})).status_code == 200
    refused = post(server, body(A, question, max_tokens=fits))
    assert refused.status_code == 400, refused.text
    assert "2 retrieved chunks included" in refused.json()["error"]["message"]
    assert post(server, body(A, HARBOR, max_tokens=2)).status_code == 200  # and it keeps serving


def test_a_streaming_client_that_disconnects_stops_generation(server):
    full = long_run(server)
    assert full
    passes = metric(server, "adaptflow_batch_size_count")
    with httpx.stream("POST", server + "/v1/chat/completions", timeout=60,
                      json=body(B, HARBOR, max_tokens=LONG, stream=True, adaptflow={"retrieval": False})) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # generation has begun
    # the connection is closed: the row leaves the batch at once instead of running 900 tokens
    wait_idle(server)
    assert metric(server, "adaptflow_batch_size_count") - passes < LONG / 2
    start = time.monotonic()
    assert post(server, body(A, HARBOR, max_tokens=2)).status_code == 200
    assert time.monotonic() - start < 5


def test_a_waiting_client_that_disconnects_stops_generation(server):
    passes = metric(server, "adaptflow_batch_size_count")
    payload = json.dumps(body(B, HARBOR, max_tokens=LONG, adaptflow={"retrieval": False})).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        deadline = time.monotonic() + 10
        while not httpx.get(server + "/health", timeout=30).json()["active_rows"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    wait_idle(server)
    assert metric(server, "adaptflow_batch_size_count") - passes < LONG / 2


def test_metrics_in_prometheus_format(server):
    assert post(server, body(A, HARBOR, max_tokens=3)).status_code == 200
    text = httpx.get(server + "/metrics", timeout=30).text
    for name in ("adaptflow_requests_total", "adaptflow_queue_depth", "adaptflow_batch_size_bucket",
                 "adaptflow_time_to_first_token_seconds_count", "adaptflow_generated_tokens_total",
                 "adaptflow_tokens_per_second", "adaptflow_adapter_events_total"):
        assert name in text, name
    assert metric(server, "adaptflow_requests_total", endpoint="chat", system=A, status="200") >= 1
    assert metric(server, "adaptflow_requests_total", endpoint="chat", system=A, status="400") >= 1
    assert metric(server, "adaptflow_generated_tokens_total", system=A) >= 3


def test_a_loaded_version_whose_files_change_is_verified_again(server, registry_copy):
    assert post(server, body(B, HARBOR, max_tokens=2)).status_code == 200
    weights = next((registry_copy / "tiny-behavior" / "v1" / "adapter").glob("*.safetensors"))
    original = weights.read_bytes()
    weights.chmod(0o644)
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit flipped
    try:
        tampered = post(server, body(B, HARBOR, max_tokens=2))
        assert tampered.status_code == 500 and tampered.json()["error"]["code"] == "integrity_error"
    finally:
        weights.write_bytes(original)
    assert post(server, body(B, HARBOR, max_tokens=2)).status_code == 200
    assert metric(server, "adaptflow_adapter_events_total", event="reload") >= 1


def test_per_request_timeout(tight):
    slow = post(tight, body(B, HARBOR, max_tokens=LONG, adaptflow={"retrieval": False}))
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout_error", slow.text
    assert post(tight, body(B, HARBOR, max_tokens=2)).status_code == 200


def test_queue_limit_answers_429_with_retry_after(tight):
    assert post(tight, body(B, HARBOR, max_tokens=2)).status_code == 200  # loaded before the burst
    responses: list[httpx.Response] = []

    def send() -> None:
        responses.append(post(tight, body(B, HARBOR, max_tokens=LONG, adaptflow={"retrieval": False})))

    threads = [threading.Thread(target=send) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(timeout=60) for t in threads]
    statuses = sorted(r.status_code for r in responses)
    assert 429 in statuses and set(statuses) <= {200, 429, 504}, statuses
    busy = next(r for r in responses if r.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1 and busy.json()["error"]["code"] == "queue_full"


def test_lru_eviction_past_max_adapters(tight):
    first = post(tight, body(A, HARBOR, max_tokens=4)).json()["choices"][0]["message"]["content"]
    assert post(tight, body(B, HARBOR, max_tokens=4)).status_code == 200
    health = httpx.get(tight + "/health", timeout=30).json()
    assert health["loaded"] == [B] and health["max_adapters"] == 1
    assert metric(tight, "adaptflow_adapter_events_total", event="evict") >= 1
    again = post(tight, body(A, HARBOR, max_tokens=4)).json()["choices"][0]["message"]["content"]
    assert again == first and httpx.get(tight + "/health", timeout=30).json()["loaded"] == [A]
