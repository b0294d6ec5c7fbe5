"""The spec contract: every shipped spec validates; each bad-spec case gives its exact message."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from components.spec import LoraSpec, TaskSpec
from components.spec.load import SpecError, load_spec
from flows.cmd_spec import spec_json_schema

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "specs").glob("*.yaml"))


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "data" / "docs").mkdir(parents=True)
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "data" / "docs" / "a.md").write_text("# A\nfact\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def errors_of(ws: Path, text: str) -> list[str]:
    (ws / "s.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(ws / "s.yaml", workspace=ws)
    return [str(i).replace(str(ws) + "/", "") for i in info.value.issues]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_validate_and_match_schema(path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(path)
    assert spec.name
    assert path.read_text().startswith("# run: adaptflow run specs/"), "each spec starts with the command that runs it"
    jsonschema.validate(yaml.safe_load(path.read_text()), spec_json_schema())


def test_there_are_example_specs_for_each_goal(monkeypatch):
    monkeypatch.chdir(REPO)
    goals = {load_spec(p).goal for p in SHIPPED}
    assert {"behavior", "knowledge", "both"} <= goals


def test_unknown_top_level_key_names_line_and_suggestion(ws):
    assert errors_of(ws, "name: t\ngaol: behavior\nbehavior:\n  data: {train: data/train.jsonl}\n") == [
        "s.yaml line 2: gaol: unknown key 'gaol'; did you mean 'goal'? "
        "(allowed: base_model, behavior, compare, compose, evaluation, goal, knowledge, name)"
    ]


def test_unknown_nested_key_in_tagged_union(ws):
    text = "name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  adapter:\n    method: lora\n    rr: 4\n"
    assert errors_of(ws, text) == [
        "s.yaml line 6: behavior.adapter.rr: unknown key 'rr'; did you mean 'r'? "
        "(allowed: alpha, dropout, method, r, target_modules)"
    ]


def test_malformed_yaml(ws):
    assert errors_of(ws, "name: t\nbehavior:\n  data: {train: x\n") == [
        "s.yaml line 4: malformed YAML: expected ',' or '}', but got '<stream end>'; fix the syntax"
    ]


def test_wrong_type(ws):
    text = "name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  training: {epochs: two}\n"
    assert errors_of(ws, text) == [
        "s.yaml line 4: behavior.training.epochs: Input should be a valid number, unable to parse string "
        "as a number (got 'two'); fix the value"
    ]


def test_missing_section_for_goal(ws):
    assert errors_of(ws, "name: t\ngoal: both\nbehavior:\n  data: {train: data/train.jsonl}\n") == [
        "s.yaml line 2: goal: goal is 'both' but the `knowledge:` section is missing; "
        "add it or set goal to 'behavior'"
    ]


def test_qlora_needs_quantization(ws):
    text = "name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  adapter: {method: qlora}\n"
    assert errors_of(ws, text) == [
        "s.yaml line 4: behavior.adapter.method: behavior.adapter.method is 'qlora' but base_model.quantization "
        "is missing; add `quantization: {bits: 4}` under base_model or use method 'lora'"
    ]


def test_path_outside_workspace(ws):
    text = "name: t\nknowledge:\n  documents: ../\n"
    [msg] = errors_of(ws, text)
    assert msg.startswith("s.yaml line 3: knowledge.documents: path '..' resolves to ")
    assert "outside the workspace" in msg and "--workspace DIR" in msg


def test_all_errors_reported_at_once(ws):
    text = "name: Bad\ngoal: behavior\nbehavior:\n  data: {train: data/nope.jsonl, format: chatt}\n"
    msgs = errors_of(ws, text)
    assert len(msgs) == 3
    assert msgs[0].startswith("s.yaml line 1: name: String should match pattern")
    assert "format: Input should be 'chat', 'instruction' or 'completion' (got 'chatt')" in msgs[2] or any(
        "chatt" in m for m in msgs
    )
    assert any("data/nope.jsonl' does not exist" in m for m in msgs)


def test_trust_remote_code_needs_revision(ws):
    text = "name: t\nbase_model: {id: some/model, trust_remote_code: true}\nbehavior:\n  data: {train: data/train.jsonl}\n"
    assert errors_of(ws, text) == [
        "s.yaml line 2: base_model.trust_remote_code: trust_remote_code is true but revision is missing; "
        "pin a commit with `revision: <sha>` (all 40 hex digits; for a local folder the sha256 of its *.py files) "
        "so the code that runs is the code you reviewed"
    ]


def test_derived_defaults_and_resolved_paths(ws):
    (ws / "s.yaml").write_text(
        "name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  adapter: {method: lora, r: 4}\n"
        "knowledge:\n  documents: data/docs\n  index: {type: 'IVF4,Flat'}\n"
    )
    spec = load_spec(ws / "s.yaml", workspace=ws)
    assert spec.behavior.adapter.resolved_alpha == 8
    assert spec.behavior.data.train == ws / "data" / "train.jsonl"
    assert spec.knowledge.index.type == "IVF4,Flat" and type(spec.knowledge.index).__name__ == "FactoryIndexSpec"
    with pytest.raises(ValidationError):
        spec.name = "other"  # frozen


def test_schema_is_valid_json_schema_and_rejects_unknown_keys():
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "t", "gaol": 1}, schema)
    json.dumps(schema)


def test_models_are_plain_pydantic():
    assert LoraSpec().resolved_alpha == 16
    assert TaskSpec.model_config["extra"] == "forbid"
