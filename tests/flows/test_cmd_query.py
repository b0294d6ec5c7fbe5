"""`adaptflow query`, `adaptflow serve`'s start-up rule, `load_system` and the Prefect `query` flow,
against systems the real pipeline registered (tests/flows/conftest.py `served_registry`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptflow.system import load_system
from components.registry import Registry
from flows.cli import app
from flows.cmd_query import is_loopback

pytestmark = pytest.mark.integration
runner = CliRunner()
HARBOR = "When did the Pellin harbor open?"


def ask(root, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["query", *args, "--root", str(root)])
    return result.exit_code, result.output


def ask_json(root, *args: str) -> dict:
    code, out = ask(root, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def test_json_answer_cites_the_right_document(served_registry):
    data = ask_json(served_registry, "tiny-both@production", HARBOR)
    assert {"answer", "citations", "system", "latency_ms"} <= set(data)
    assert data["system"] == "tiny-both@v1"
    assert [c["n"] for c in data["citations"]] == [1, 2]  # the spec's top_k
    first = data["citations"][0]
    assert first["doc_id"] == "harbor.md" and first["title"] == "Harbor" and "1871" in first["snippet"]
    assert first["score"] >= data["citations"][1]["score"]


def test_text_output_lists_numbered_sources(served_registry):
    code, out = ask(served_registry, "tiny-both", "Who founded the Saltmarsh choir?")
    assert code == 0, out
    assert "Sources:\n  [1] choir.md — Choir (score " in out and "Ruth Adeyemi" in out
    assert "(tiny-both@v1; " in out


def test_ablation_and_limit_options(served_registry):
    assert ask_json(served_registry, "tiny-both@v1", HARBOR, "--no-retrieval")["citations"] == []
    assert len(ask_json(served_registry, "tiny-both@v1", HARBOR, "--top-k", "1")["citations"]) == 1
    short = ask_json(served_registry, "tiny-behavior@v1", HARBOR, "--max-tokens", "2")
    assert short["usage"]["completion_tokens"] <= 2
    # the base model alone answers the same whichever system it is reached through
    base = ask_json(served_registry, "tiny-both@v1", HARBOR, "--no-adapter", "--no-retrieval")["answer"]
    assert ask_json(served_registry, "tiny-behavior@v1", HARBOR, "--no-adapter", "--no-retrieval")["answer"] == base
    tuned = ask_json(served_registry, "tiny-behavior@v1", HARBOR, "--no-retrieval")["answer"]
    assert tuned != base, "the trained adapter should change the tiny model's answer"


def test_unknown_system_is_one_clear_line(served_registry):
    code, out = ask(served_registry, "no-such-system@v1", HARBOR)
    assert code == 1 and "no task named 'no-such-system'" in out and "Traceback" not in out
    code, out = ask(served_registry, "tiny-both@v9", HARBOR)
    assert code == 1 and "has no version v9" in out


def test_python_api_returns_what_json_prints(served_registry):
    system = load_system("tiny-both@production", Registry(served_registry))
    answer = system.query(HARBOR).to_dict()
    printed = ask_json(served_registry, "tiny-both@production", HARBOR)
    assert set(answer) == set(printed)
    assert answer["answer"] == printed["answer"] and answer["citations"] == printed["citations"]


def test_prefect_query_flow_uses_the_same_path(served_registry, monkeypatch):
    from flows import deployments

    monkeypatch.setenv("ADAPTFLOW_REGISTRY", str(served_registry))
    # the form's dropdown lists the registry's systems when the flow is first built: build it from this registry,
    # not from whatever ./registry holds (after `make demo`, lore-assistant's refs only)
    deployments.ui_flows.cache_clear()
    try:
        result = deployments.query_registered("tiny-both@production", HARBOR)
    finally:
        deployments.ui_flows.cache_clear()
    assert result["system"] == "tiny-both@v1" and result["citations"][0]["doc_id"] == "harbor.md"


def test_serve_refuses_a_public_address_without_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAPTFLOW_API_KEY", raising=False)
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "ADAPTFLOW_API_KEY" in result.output


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False),
])
def test_loopback_rule(host, loopback):
    assert is_loopback(host) is loopback
