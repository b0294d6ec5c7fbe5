"""`evaluation.forgetting` (harness tasks): validation, errors, the schema, and the older `forgetting_text` beside it.

No lm-eval run here (tests/harness/test_forgetting.py runs one). Whether lm-eval is importable is this venv's fact:
with it, a spec naming harness tasks validates; without it, validate says which field needs it and how to install.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.spec import EvaluationSpec
from components.spec.evaluation import HARNESS_INSTALL, harness_installed
from components.spec.load import SpecError, load_spec
from flows.cmd_spec import spec_json_schema

HEAD = "name: t\nbehavior:\n  data: {train: data/train.jsonl}\nevaluation:\n"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "data" / "general.txt").write_text("Some general text.\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text("task: mine\n")
    return tmp_path


def load(ws: Path, evaluation: str):
    (ws / "s.yaml").write_text(HEAD + evaluation)
    return load_spec(ws / "s.yaml", workspace=ws)


def issues(ws: Path, evaluation: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(ws, evaluation)
    return [str(i).replace(str(ws) + "/", "") for i in info.value.issues]


@pytest.mark.skipif(not harness_installed(), reason="lm-eval is not installed: the error case below runs instead")
def test_harness_tasks_validate_names_kept_paths_resolved(ws):
    spec = load(ws, "  forgetting: {harness: [arc_easy, tasks/mine.yaml, tasks/], limit: 20}\n")
    forgetting = spec.evaluation.forgetting
    assert forgetting.harness == ["arc_easy", str(ws / "tasks" / "mine.yaml"), str(ws / "tasks")]
    assert forgetting.limit == 20 and forgetting.apply_chat_template is False
    assert EvaluationSpec.model_fields["forgetting"].default is None
    assert load(ws, "  forgetting: {harness: [arc_easy]}\n").evaluation.forgetting.limit == 100  # the default


@pytest.mark.skipif(harness_installed(), reason="lm-eval is installed: the case above runs instead")
def test_harness_tasks_without_lm_eval_name_the_field_and_the_install(ws):
    assert issues(ws, "  forgetting: {harness: [arc_easy]}\n") == [
        "s.yaml line 5: evaluation.forgetting.harness: lm-eval (lm-evaluation-harness) is not installed, and these "
        f"tasks need it; run `{HARNESS_INSTALL}` or remove evaluation.forgetting.harness"]


@pytest.mark.skipif(not harness_installed(), reason="the path checks run after the lm-eval check")
def test_bad_harness_entries_name_the_line_the_field_and_the_fix(ws):
    assert issues(ws, "  forgetting:\n    harness: [tasks/nope.yaml]\n    limt: 3\n") == [
        "s.yaml line 6: evaluation.forgetting.harness: path 'tasks/nope.yaml' does not exist (looked for "
        "tasks/nope.yaml); fix the path or create the file",
        "s.yaml line 7: evaluation.forgetting.limt: unknown key 'limt'; did you mean 'limit'? "
        "(allowed: apply_chat_template, harness, limit)"]
    assert issues(ws, "  forgetting: {harness: []}\n")[0].startswith(
        "s.yaml line 5: evaluation.forgetting.harness: List should have at least 1 item")
    assert "list each task once" in issues(ws, "  forgetting: {harness: [arc_easy, arc_easy]}\n")[0]
    assert "limit" in issues(ws, "  forgetting: {harness: [arc_easy], limit: 0}\n")[0]


def test_forgetting_text_keeps_working_and_the_schema_gains_only_the_new_field(ws):
    spec = load(ws, "  forgetting_text: data/general.txt\n")
    assert spec.evaluation.forgetting_text == ws / "data" / "general.txt" and spec.evaluation.forgetting is None
    schema = spec_json_schema()
    evaluation = schema["$defs"]["EvaluationSpec"]["properties"]
    assert set(evaluation) == {"data", "gates", "promote_to", "max_new_tokens", "forgetting_text", "forgetting"}
    assert set(schema["$defs"]["ForgettingSpec"]["properties"]) == {"harness", "limit", "apply_chat_template"}
