"""The OpenAI fields clients rely on, through the official `openai` client against a real
`adaptflow serve` over systems the real pipeline registered (conftest `served_registry`)."""

from __future__ import annotations

import json
import threading
from datetime import datetime

import jsonschema
import numpy as np
import openai
import pytest

from components.registry import Registry
from tests.flows.serve_helpers import running_server

pytestmark = pytest.mark.integration
HARBOR = "When did the Pellin harbor open?"
CHOIR = "Who founded the Saltmarsh choir?"
A, B = "tiny-both@production", "tiny-behavior@v1"


@pytest.fixture(scope="module")
def server(served_registry, tmp_path_factory):
    with running_server(served_registry, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)


def ask(client, model: str = A, question: str = HARBOR, **extra):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **extra)


def test_stop_is_trimmed_from_the_reply(client):
    full = ask(client, max_tokens=16).choices[0].message.content
    assert len(full) > 6, full
    stop = full[len(full) // 2: len(full) // 2 + 3]
    stopped = ask(client, max_tokens=16, stop=[stop])
    assert stopped.choices[0].message.content == full[: full.index(stop)].strip()
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].message.content


def test_seed_gives_the_same_reply_and_n_gives_n_choices(client):
    first, again = (ask(client, temperature=1.0, seed=11, max_tokens=12) for _ in range(2))
    assert first.choices[0].message.content == again.choices[0].message.content
    several = ask(client, temperature=1.0, seed=11, max_tokens=12, n=3)
    texts = [c.message.content for c in several.choices]
    assert [c.index for c in several.choices] == [0, 1, 2] and texts[0] == first.choices[0].message.content
    assert len(set(texts)) > 1  # choice i samples with seed + i
    assert several.usage.completion_tokens > first.usage.completion_tokens


def test_logprobs_and_top_logprobs(client):
    done = ask(client, max_tokens=5, logprobs=True, top_logprobs=3)
    content = done.choices[0].logprobs.content
    assert len(content) == done.usage.completion_tokens
    assert "".join(t.token for t in content).strip() == done.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token  # greedy picks the most likely token
    assert ask(client, max_tokens=3).choices[0].logprobs is None


def test_response_format_json_object_and_json_schema(client):
    done = ask(client, max_tokens=120, temperature=0.7, seed=1, response_format={"type": "json_object"})
    assert isinstance(json.loads(done.choices[0].message.content), dict), done.choices[0].message.content
    schema = {"type": "object", "properties": {"year": {"type": "integer"}, "place": {"enum": ["harbor", "mill"]}},
              "required": ["year", "place"], "additionalProperties": False}
    for seed in range(2):
        done = ask(client, max_tokens=60, temperature=1.0, seed=seed,
                   response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
        jsonschema.validate(json.loads(done.choices[0].message.content), schema)
    with pytest.raises(openai.BadRequestError, match="schema"):
        ask(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}})


def test_tools_and_unknown_fields_are_refused(client):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="tool calling is not supported"):
        ask(client, tools=[tool])
    with pytest.raises(openai.BadRequestError, match="penalties are not supported"):
        ask(client, presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="unknown field 'frobnicate'"):
        ask(client, extra_body={"frobnicate": 1})


def test_text_completions_take_a_raw_prompt(client):
    done = client.completions.create(model=A, prompt="The harbor opened in", max_tokens=6, logprobs=2)
    choice = done.choices[0]
    assert done.object == "text_completion" and choice.finish_reason in {"stop", "length"}
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.top_logprobs[0]) == 2
    assert done.model_extra["citations"] == []  # no retrieval unless asked
    with_context = client.completions.create(model=A, prompt="The harbor opened in", max_tokens=2,
                                             extra_body={"adaptflow": {"retrieval": True}})
    assert with_context.model_extra["citations"][0]["doc_id"] == "harbor.md"
    assert with_context.usage.prompt_tokens > done.usage.prompt_tokens
    streamed = client.completions.create(model=A, prompt="The harbor opened in", max_tokens=6, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == choice.text


def test_embeddings_are_the_systems_embedder(client):
    from vectorstore.embedder import load_embedder

    texts = ["the harbor opened in 1871", "a flood broke the wheel"]
    got = client.embeddings.create(model=A, input=texts)
    expected = load_embedder("all-minilm-l6-v2").encode(texts)
    assert [d.index for d in got.data] == [0, 1] and got.usage.prompt_tokens > 0
    assert np.allclose(np.array([d.embedding for d in got.data]), expected, atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="no knowledge index"):
        client.embeddings.create(model=B, input="x")


def test_adaptflow_extension_controls_retrieval_and_adapter(client):
    full = ask(client, max_tokens=6)
    assert len(full.model_extra["citations"]) == 2 and full.model_extra["adaptflow"]["system"] == "tiny-both@v1"
    one = ask(client, max_tokens=6, extra_body={"adaptflow": {"top_k": 1}})
    assert len(one.model_extra["citations"]) == 1
    bare = ask(client, max_tokens=6, extra_body={"adaptflow": {"retrieval": False}})
    assert bare.model_extra["citations"] == [] and bare.usage.prompt_tokens < full.usage.prompt_tokens
    # both systems sit on the same base: without their adapters and retrieval they answer the same
    off = {"adaptflow": {"adapter": False, "retrieval": False}}
    assert ask(client, A, max_tokens=6, extra_body=off).choices[0].message.content == \
        ask(client, B, max_tokens=6, extra_body=off).choices[0].message.content


def test_models_created_is_the_registration_time(client, served_registry):
    cards = {m.id: m.created for m in client.models.list()}
    version = Registry(served_registry).resolve("tiny-both@v1")
    expected = int(datetime.fromisoformat(version.manifest["created_at"]).timestamp())
    assert cards["tiny-both@v1"] == cards["tiny-both@production"] == expected > 1_700_000_000


def test_eight_concurrent_mixed_adapter_requests(client):
    jobs = [((A, B)[i % 2], (HARBOR, CHOIR)[i // 2 % 2]) for i in range(8)]
    expected = {job: ask(client, *job, max_tokens=8).choices[0].message.content for job in set(jobs)}
    got: dict[int, str] = {}

    def worker(i: int) -> None:
        got[i] = ask(client, *jobs[i], max_tokens=8).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert [got.get(i) for i in range(8)] == [expected[job] for job in jobs]
    assert expected[(A, HARBOR)] != expected[(B, HARBOR)]
