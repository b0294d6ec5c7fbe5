"""`knowledge.reader_model` (issue 24): another local model writes the knowledge answers. The spec's rules, the
reader that must belong to that model, and what `plan` shows; the real pipeline is in
tests/flows/test_reader_model_flow.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptflow.preflight import _reader_model_issues
from components.registry import Registry, manifest_base
from components.routing.plan import reading_plan
from components.spec import BUILTIN_GEMMA, BUILTIN_MODEL, ReaderModelSpec, TaskSpec
from components.spec.load import SpecError, load_spec
from components.store.stages import digest
from components.training.reader import reader_mode

KNOWLEDGE = "name: t\nknowledge:\n  documents: data/docs/\n"


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "data" / "docs").mkdir(parents=True)
    (tmp_path / "data" / "docs" / "a.md").write_text("# A\nfact\n")
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(ws: Path, text: str) -> TaskSpec:
    (ws / "s.yaml").write_text(text)
    return load_spec(ws / "s.yaml", workspace=ws)


def errors_of(ws: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(ws, text)
    return [str(i).replace(str(ws) + "/", "") for i in info.value.issues]


def test_a_string_is_the_id_and_a_spec_without_it_hashes_as_before(ws):
    plain = load(ws, KNOWLEDGE)
    given = load(ws, KNOWLEDGE + f"  reader_model: {BUILTIN_GEMMA}\n")
    assert isinstance(given.knowledge.reader_model, ReaderModelSpec)
    assert given.reading_model.id == BUILTIN_GEMMA and plain.reading_model is plain.base_model
    assert "reader_model" not in plain.model_dump(mode="json")["knowledge"]  # stage keys and spec hashes unchanged
    dumped = given.model_dump(mode="json")
    assert dumped["knowledge"]["reader_model"]["id"] == BUILTIN_GEMMA
    again = TaskSpec.model_validate(dumped, context={"check_exists": False})  # as load_system reads a manifest
    assert again.reading_model == given.reading_model
    mapping = load(ws, KNOWLEDGE + "  reader_model: {id: gemma3-270m, chat_template: chatml}\n")
    assert mapping.reading_model.chat_template == "chatml"


def test_behavior_with_reader_model_is_refused_with_the_reason(ws):
    text = ("name: t\nbehavior:\n  data: {train: data/train.jsonl}\nknowledge:\n  documents: data/docs/\n"
            f"  reader_model: {BUILTIN_GEMMA}\n")
    assert errors_of(ws, text) == [
        "s.yaml line 6: knowledge.reader_model: knowledge.reader_model is 'gemma3-270m' but the spec trains a `behavior:` adapter on base_model "
        "'smollm2-135m-instruct', and one system generates with one model; remove knowledge.reader_model (the "
        "adapter then reads the context), or move the behavior examples to another spec"]


def test_trained_documents_with_reader_model_are_refused(ws):
    text = KNOWLEDGE + f"  inject: finetune\n  reader_model: {BUILTIN_GEMMA}\n"
    [error] = errors_of(ws, text)
    assert "knowledge.reader_model is set but knowledge.inject is 'finetune'" in error
    assert "use inject: rag, or set base_model.id to the reader model instead" in error


def test_a_path_that_is_no_folder_names_the_reader_model_field(ws):
    [error] = errors_of(ws, KNOWLEDGE + "  reader_model: ./models/big\n")
    assert "knowledge.reader_model.id './models/big' is written as a path but" in error
    [error] = errors_of(ws, KNOWLEDGE + "  reader_model: {id: gemma3-270m, chat_template: nope.jinja}\n")
    assert error.startswith("s.yaml line 4: knowledge.reader_model: knowledge.reader_model.chat_template: path "
                            "'nope.jinja' does not exist")


def test_outside_the_workspace_needs_the_flag(ws, tmp_path_factory):
    outside = tmp_path_factory.mktemp("reader-outside")
    [error] = errors_of(ws, KNOWLEDGE + f"  reader_model: {outside}\n")
    assert "set `knowledge.reader_model.allow_outside_workspace: true`" in error
    spec = load(ws, KNOWLEDGE + f"  reader_model: {{id: {outside}, allow_outside_workspace: true}}\n")
    assert spec.reading_model.id == str(outside)


def test_the_builtin_reader_belongs_to_the_reading_model(ws):
    assert reader_mode(load(ws, KNOWLEDGE + f"  reader_model: {BUILTIN_GEMMA}\n")) is None  # auto: none ships for it
    assert reader_mode(load(ws, KNOWLEDGE + f"  reader_model: {BUILTIN_GEMMA}\n  reader: builtin\n")) == "builtin"
    spec = load(ws, f"name: t\nbase_model: {{id: {BUILTIN_GEMMA}}}\nknowledge:\n  documents: data/docs/\n"
                    f"  reader_model: {BUILTIN_MODEL}\n")
    assert reader_mode(spec) == "builtin"  # auto: the built-in model reads, so its shipped reader applies


def fake_weights(folder: Path, content: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(content)  # hashed, never loaded, by these checks
    return folder


def test_a_registered_reader_of_another_model_is_a_validate_error(ws, monkeypatch):
    monkeypatch.setenv("ADAPTFLOW_REGISTRY", str(ws / "registry"))
    fake_weights(ws / "reader-a", b"a")
    staging = ws / "staging" / "adapter"
    staging.mkdir(parents=True)
    (staging / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    published = load(ws, KNOWLEDGE)
    record = {"id": "other", "revision": None, "weights_hash": digest("other weights"), "path": "other"}
    Registry().publish("reads", staging.parent, manifest_base(published, base_model=record), aliases=["latest"])
    spec = load(ws, KNOWLEDGE + "  reader_model: ./reader-a\n  reader: reads@latest\n")
    [issue] = _reader_model_issues(spec, "s.yaml")
    assert issue.path == "knowledge.reader" and "was trained on another model" in issue.message
    assert "this spec's knowledge.reader_model" in issue.message and "register a reader on this model" in issue.message
    missing = load(ws, KNOWLEDGE + "  reader_model: ./reader-a\n  reader: nobody@latest\n")
    assert [i.path for i in _reader_model_issues(missing, "s.yaml")] == ["knowledge.reader"]
    shutil.rmtree(ws / "staging")


def test_plan_names_the_model_that_writes_the_answers(ws):
    fake_weights(ws / "reader-b", b"b")
    spec = load(ws, KNOWLEDGE + "  reader_model: {id: ./reader-b, chat_template: chatml}\n")
    shown = reading_plan(spec)
    assert shown["model"] == str(ws / "reader-b") and shown["from"] == "knowledge.reader_model"
    assert shown["chat_template"] == "chatml" and shown["reader"] == "none" and len(shown["weights_hash"]) == 64


def test_the_json_schema_takes_the_string_and_the_mapping():
    import jsonschema

    from flows.cmd_spec import spec_json_schema

    schema = spec_json_schema()
    for given in (BUILTIN_GEMMA, {"id": BUILTIN_GEMMA, "chat_template": "chatml"}):
        jsonschema.validate({"name": "t", "knowledge": {"documents": "d", "reader_model": given}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "t", "knowledge": {"documents": "d", "reader_model": {"idd": "x"}}}, schema)
