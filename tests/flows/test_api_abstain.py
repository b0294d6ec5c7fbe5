"""The server's chat completions answer with the registered system's calibrated abstention, streamed or not,
exactly as `query` does (docs/reading.md, `knowledge.abstain`)."""

from __future__ import annotations

import json
import shutil

import openai
import pytest

from components.models.prompting import ABSTAIN_PHRASE
from components.registry import Registry
from components.registry.core import ASSIGNED_KEYS
from tests.flows.serve_helpers import running_server

pytestmark = pytest.mark.integration
HARBOR = "When did the Pellin harbor open?"


@pytest.fixture(scope="module")
def declining(served_registry, tmp_path_factory):
    """`tiny-both@v1` (a LoRA and an index, registered by the real pipeline) published again through the registry
    as `tiny-declines`, its report carrying a calibrated abstention whose threshold declines every answer read
    from context: what a calibration that found nothing answerable would register."""
    source = Registry(served_registry).open("tiny-both@v1")
    staging = tmp_path_factory.mktemp("declines-staging")
    for part in ("adapter", "index", "eval"):
        shutil.copytree(source.path / part, staging / part)
    report = json.loads((staging / "eval" / "report.json").read_text())
    report["abstention"] = {"mode": "calibrated", "score": "sum", "threshold": -1.0e9}
    (staging / "eval" / "report.json").write_text(json.dumps(report, indent=2))
    manifest = {k: v for k, v in source.manifest.items() if k not in ASSIGNED_KEYS} | {"name": "tiny-declines"}
    root = tmp_path_factory.mktemp("declines-registry")
    Registry(root).publish("tiny-declines", staging, manifest, aliases=["latest"])
    return root


def test_both_chat_paths_decline_as_query_does_and_the_base_answers_as_before(declining, tmp_path):
    from adaptflow.system import load_system

    system = load_system("tiny-declines@latest", Registry(declining))
    assert system.abstention.threshold == -1.0e9
    assert system.query(HARBOR).answer == ABSTAIN_PHRASE
    base = system.query(HARBOR, use_adapter=False).answer
    with running_server(declining, tmp_path / "serve.log") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": HARBOR}]
        whole = client.chat.completions.create(model="tiny-declines@latest", messages=messages, max_tokens=6)
        assert whole.choices[0].message.content == ABSTAIN_PHRASE and whole.model_extra["citations"]
        pieces = client.chat.completions.create(model="tiny-declines@latest", messages=messages, max_tokens=6,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == ABSTAIN_PHRASE
        off = client.chat.completions.create(model="tiny-declines@latest", messages=messages, max_tokens=6,
                                             extra_body={"adaptflow": {"adapter": False}})
        assert off.choices[0].message.content == base.strip()  # the base model is not the reader: its text alone
