"""A run checks its inputs and its registry before any model loads (adaptflow/preflight.py)."""

from __future__ import annotations

import json

import pytest

from components.registry import RegistryError
from components.spec.load import SpecError
from tests.adaptflow.test_preflight import readonly_dir  # noqa: F401 - a real read-only mount, when allowed

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


def test_documents_linked_from_inside_the_workspace_are_indexed_and_outside_ones_refused(
        prefect_api, isolated, make_workspace, tmp_path_factory):
    import os

    from components.registry import Registry
    from flows.pipeline import adapt
    from vectorstore import read_docstore

    spec = make_workspace(goal="knowledge", gates='{hit_at_k: ">= 0.0"}')
    (isolated / "shared").mkdir()
    (isolated / "shared" / "ferry.md").write_text("# Ferry\n\nThe Pellin ferry crosses to Orlan twice a day.\n")
    os.symlink(isolated / "shared" / "ferry.md", isolated / "data" / "docs" / "ferry.md")
    ref = adapt(str(spec))  # Prefect passes the spec between flows: the workspace it was loaded with travels along
    assert ref == "tiny-knowledge@v1"
    version = Registry().resolve(ref)
    rows = read_docstore(version.path / "index" / "docstore.jsonl")
    assert "ferry.md" in {r["doc_id"] for r in rows.values()}

    outside = tmp_path_factory.mktemp("outside") / "host.txt"
    outside.write_text("not for citation\n")
    os.symlink(outside, isolated / "data" / "docs" / "host.txt")
    with pytest.raises(SpecError, match=r"knowledge.documents must not hold symlinks that leave the workspace"):
        adapt(str(spec))
