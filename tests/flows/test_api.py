"""`adaptflow serve` as a real subprocess on a free loopback port, driven by the official `openai`
client and by raw HTTP, over systems the real pipeline registered (conftest `served_registry`)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from components.registry import Registry
from flows.api import Limits, create_app
from tests.flows.serve_helpers import running_server

pytestmark = pytest.mark.integration
HARBOR = "When did the Pellin harbor open?"
A, B = "tiny-both@production", "tiny-behavior@v1"  # two LoRA systems on one base


@pytest.fixture(scope="module")
def server(served_registry, tmp_path_factory):
    with running_server(served_registry, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)


def chat(url: str, model: str, question: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": question}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_openai_client_lists_every_version_and_alias(client):
    ids = {m.id for m in client.models.list()}
    for name in ("tiny-both", "tiny-behavior"):
        assert {f"{name}@v1", f"{name}@latest", f"{name}@production"} <= ids


def test_openai_client_chat_carries_citations(client):
    done = client.chat.completions.create(model="tiny-both@production", max_tokens=8,
                                          messages=[{"role": "user", "content": HARBOR}])
    assert done.object == "chat.completion" and done.system_fingerprint == "tiny-both@v1"
    assert done.choices[0].message.role == "assistant" and done.choices[0].finish_reason in {"stop", "length"}
    assert 0 < done.usage.completion_tokens <= 8 and done.usage.prompt_tokens > 20  # context is in the prompt
    citations = done.model_extra["citations"]
    assert citations[0]["doc_id"] == "harbor.md" and citations[0]["n"] == 1 and "1871" in citations[0]["snippet"]

    chunks = list(client.chat.completions.create(model="tiny-both@production", max_tokens=8, stream=True,
                                                 messages=[{"role": "user", "content": HARBOR}]))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    assert text == done.choices[0].message.content  # greedy: the same answer either way
    last = chunks[-1]
    assert last.choices[0].finish_reason == done.choices[0].finish_reason
    assert last.model_extra["citations"] == citations and last.usage.completion_tokens == done.usage.completion_tokens


def test_alternating_systems_switch_adapters_without_reloading_the_base(server):
    first = {m: chat(server, m, HARBOR, max_tokens=6).json() for m in (A, B)}
    answers = {m: r["choices"][0]["message"]["content"] for m, r in first.items()}
    assert answers[A] != answers[B], "two differently trained adapters should answer differently"
    loads = httpx.get(server + "/health").json()["base_loads"]
    for _ in range(3):
        for model in (A, B):
            assert chat(server, model, HARBOR, max_tokens=6).json()["choices"][0]["message"]["content"] == answers[model]
    health = httpx.get(server + "/health").json()
    assert health["base_loads"] == loads == 1  # every system of this module runs on the one tiny base copy
    assert set(health["loaded"]) == {"tiny-both@v1", "tiny-behavior@v1"}


def test_concurrent_requests_get_their_own_systems_answer(server):
    questions = [HARBOR, "Who founded the Saltmarsh choir?"]
    expected = {(m, q): chat(server, m, q, max_tokens=5).json()["choices"][0]["message"]["content"]
                for m in (A, B) for q in questions}
    got: list[tuple[str, str, str]] = []

    def worker(k: int) -> None:
        for i in range(4):
            model, question = (A, B)[(i + k) % 2], questions[(i // 2 + k) % 2]
            response = chat(server, model, question, max_tokens=5)
            got.append((model, question, response.json()["choices"][0]["message"]["content"]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    assert len(got) == 16 and all(answer == expected[(m, q)] for m, q, answer in got)


def assert_error(response: httpx.Response, status: int, fragment: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and fragment in body["message"], body
    if param is not None:
        assert body["param"] == param


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    url = server + "/v1/chat/completions"
    user = [{"role": "user", "content": "hi"}]
    assert_error(httpx.post(url, content=b'{"model": "tiny-both", "messages": [', timeout=30), 400, "malformed JSON")
    assert_error(httpx.post(url, content=b"\xff\xfe{", timeout=30), 400, "malformed JSON")
    assert_error(httpx.post(url, content=json.dumps({"model": "x", "messages": user, "pad": "a" * 300_000}),
                            timeout=30), 413, "limit")
    chunked = (bytes(1024) for _ in range(300))  # no Content-Length: the body is counted as it arrives
    assert_error(httpx.post(url, content=chunked, timeout=30), 413, "limit")
    assert_error(chat(server, "no-such-system@v1", "hi"), 404, "no task named 'no-such-system'", "model")
    assert_error(chat(server, "tiny-both@v7", "hi"), 404, "has no version v7", "model")
    assert_error(chat(server, "tiny-both", "hi", max_tokens=100_000), 400, "cap", "max_tokens")
    assert_error(httpx.post(url, json={"model": "tiny-both", "messages": user * 65}, timeout=30), 400, "limit",
                 "messages")
    assert_error(httpx.post(url, json={"model": "tiny-both", "messages": []}, timeout=30), 400, "messages",
                 "messages")
    assert_error(httpx.post(url, json={"model": "tiny-both", "messages": [{"role": "system", "content": "x"}]},
                            timeout=30), 400, "role 'user'", "messages")
    assert_error(httpx.post(url, json={"model": "tiny-both", "messages": [{"role": "robot", "content": "x"}]},
                            timeout=30), 400, "messages.0.role")
    assert_error(httpx.post(url, json=[1, 2], timeout=30), 400, "body")
    assert_error(httpx.get(server + "/v1/nothing-here", timeout=30), 404, "POST /v1/chat/completions")
    assert_error(httpx.get(url, timeout=30), 405, "Method Not Allowed")
    assert httpx.get(server + "/health", timeout=30).json()["status"] == "ok"
    good = chat(server, "tiny-both", HARBOR, max_tokens=2)
    assert good.status_code == 200 and good.json()["citations"][0]["doc_id"] == "harbor.md"


def test_openai_client_sees_errors_as_its_exceptions(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="no-such-system"):
        client.chat.completions.create(model="no-such-system", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="cap"):
        client.chat.completions.create(model="tiny-both", max_tokens=10_000,
                                       messages=[{"role": "user", "content": "hi"}])


def test_bearer_token_guards_v1_but_not_health(served_registry):
    app = create_app(Registry(served_registry), api_key="s3cret", limits=Limits(max_tokens_cap=8))
    with TestClient(app) as http:
        assert http.get("/health").status_code == 200
        assert_error(http.get("/v1/models"), 401, "bearer token")
        assert_error(http.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "bearer token")
        assert_error(http.get("/v1/models", headers={"Authorization": "s3cret"}), 401, "bearer token")
        listed = http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert listed.status_code == 200 and "tiny-both@production" in {m["id"] for m in listed.json()["data"]}
