"""A run checks its inputs and its registry before any model loads (components/preflight.py)."""

from __future__ import annotations

import json

import pytest

from components.registry import RegistryError
from components.specload import SpecError
from tests.components.test_preflight import readonly_dir  # noqa: F401 - a real read-only mount, when allowed

pytestmark = pytest.mark.integration


def test_read_only_registry_fails_before_training(prefect_api, isolated, make_workspace, readonly_dir, monkeypatch):  # noqa: F811
    from flows.pipeline import adapt

    spec = make_workspace(goal="behavior", gates='{answer_f1: ">= 0.0"}')
    monkeypatch.setenv("ADAPTFLOW_REGISTRY", str(readonly_dir))
    with pytest.raises(RegistryError, match="is not writable .*checked before training so no work is lost"):
        adapt(str(spec))
    assert not (isolated / "stages").exists()  # nothing trained, indexed or evaluated


def test_bad_evaluation_row_fails_before_training(prefect_api, isolated, make_workspace):
    from flows.pipeline import adapt

    spec = make_workspace(goal="both")
    qa = isolated / "data" / "qa.jsonl"
    qa.write_text(qa.read_text() + json.dumps({"question": "Who?", "answer": None}) + "\n"
                  + json.dumps({"question": "Where?", "answer": "x", "doc_ids": ["harbour"]}) + "\n")
    with pytest.raises(SpecError) as info:
        adapt(str(spec))
    assert [str(i).removeprefix(str(isolated) + "/") for i in info.value.issues] == [
        "data/qa.jsonl line 4: answer: 'answer' is null; write the expected answer (a string, or a list of "
        "acceptable answers)",
        "data/qa.jsonl line 5: doc_ids: 'harbour' matches no document (closest: harbor.md, choir.md) in "
        "knowledge.documents; write the path relative to the documents folder, with or without its extension, or a "
        "stem no other file shares",
    ]
    assert not (isolated / "stages").exists()
