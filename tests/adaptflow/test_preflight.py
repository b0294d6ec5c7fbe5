"""Checks before any model loads: evaluation rows, gold doc ids, the registry; and no gates, no promotion.

The registry cases use a real read-only bind mount and a real full tmpfs when the machine allows
(root with mount rights), else a folder whose writes fail for another real reason.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from adaptflow.preflight import check_before_run, check_inputs, check_registry_writable
from components.evaluation.gates import evaluate_gates
from components.registry import Registry, RegistryError
from components.spec.evalset import resolve_gold_ids, retrieval_metrics
from components.spec.load import SpecError, load_spec


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "data" / "docs" / "ports").mkdir(parents=True)
    for name in ("harbor-authority.md", "history.md", "ports/harbor.txt", "ports/mill.md"):
        (tmp_path / "data" / "docs" / name).write_text(f"# {name}\nfact\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_spec(ws: Path, rows: list, gates: str = "{}") -> Path:
    (ws / "data" / "qa.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    (ws / "s.yaml").write_text(
        f"name: t\nknowledge: {{documents: data/docs}}\nevaluation: {{data: data/qa.jsonl, gates: {gates}}}\n"
    )
    return ws / "s.yaml"


def problems(ws: Path, rows: list) -> list[str]:
    spec_file = write_spec(ws, rows)
    return [str(i).replace(str(ws) + "/", "") for i in check_inputs(load_spec(spec_file, ws), spec_file)]


def test_every_bad_evaluation_row_is_named_with_its_line(ws):
    rows = [
        {"question": "q1", "answer": "1871"},
        {"question": "q2", "answer": None},
        {"question": "q3", "answer": "   "},
        {"question": "q4", "answer": []},
        {"question": "q5"},
        {"answer": "x"},
        "not json",
        {"messages": [{"role": "system", "content": "s"}], "answer": "x"},
        {"question": "q9", "answer": "x", "doc_ids": "history.md"},
    ]
    assert problems(ws, rows) == [
        "data/qa.jsonl line 2: answer: 'answer' is null; write the expected answer (a string, or a list of "
        "acceptable answers)",
        "data/qa.jsonl line 3: answer: 'answer' is empty; write the expected answer (an empty gold answer scores "
        "every prediction as wrong)",
        "data/qa.jsonl line 4: answer: 'answer' is a list, so it must hold non-empty strings; give one answer or a "
        "list of acceptable ones",
        "data/qa.jsonl line 5: answer: missing field 'answer'; every evaluation row needs the expected answer",
        "data/qa.jsonl line 6: question: needs 'question' or 'messages'; add one of them",
        "data/qa.jsonl line 7: not valid JSON (Expecting value); one object per line",
        "data/qa.jsonl line 8: question: 'messages' has no non-empty user message; add the question as "
        "{\"role\": \"user\", ...}",
        "data/qa.jsonl line 9: doc_ids: 'doc_ids' must be a list of document ids, e.g. [\"harbor.md\"]; fix the value",
    ]


def test_gold_doc_ids_accept_path_bare_path_and_unique_stem(ws):
    rows = [{"question": "q", "answer": "a", "doc_ids": ids} for ids in (
        ["history.md"], ["history"], ["ports/harbor.txt"], ["ports/harbor"], ["harbor"], ["mill"],
    )]
    assert problems(ws, rows) == []
    docs = ["harbor-authority.md", "history.md", "ports/harbor.txt", "ports/mill.md"]
    assert resolve_gold_ids(["history", "ports/harbor", "harbor", "mill"], docs) == (
        ["history.md", "ports/harbor.txt", "ports/harbor.txt", "ports/mill.md"], [])
    # converted documents (PDF, DOCX, ...) are named the same ways
    assert resolve_gold_ids(["manual", "slides/deck", "deck"], ["manual.pdf", "slides/deck.pptx"]) == (
        ["manual.pdf", "slides/deck.pptx", "slides/deck.pptx"], [])


def test_unknown_or_ambiguous_gold_doc_ids_are_refused_with_the_closest_ids(ws):
    (ws / "data" / "docs" / "more").mkdir()
    (ws / "data" / "docs" / "more" / "mill.txt").write_text("another mill\n")  # the stem 'mill' names two files
    rows = [{"question": "q", "answer": "a", "doc_ids": ["harbour"]},
            {"question": "q", "answer": "a", "doc_ids": ["mill"]},
            {"question": "q", "answer": "a", "doc_ids": ["history", "history.md"]}]
    assert problems(ws, rows) == [
        "data/qa.jsonl line 1: doc_ids: 'harbour' matches no document (closest: ports/harbor.txt, "
        "harbor-authority.md, history.md) in knowledge.documents; write the path relative to the documents folder, with or without "
        "its extension, or a stem no other file shares",
        "data/qa.jsonl line 2: doc_ids: 'mill' names 2 documents (more/mill.txt, ports/mill.md) in "
        "knowledge.documents; write the path relative to the documents folder, with or without its extension, "
        "or a stem no other file shares",
        "data/qa.jsonl line 3: doc_ids: names the same document twice; remove the repeat",
    ]


def test_validate_cli_reports_eval_rows_and_gold_ids(ws):
    from typer.testing import CliRunner

    from flows.cli import app

    write_spec(ws, [{"question": "q", "answer": None}, {"question": "q", "answer": "a", "doc_ids": ["harbour"]}])
    result = CliRunner().invoke(app, ["validate", str(ws / "s.yaml"), "--workspace", str(ws)])
    assert result.exit_code == 1
    assert "qa.jsonl line 1: answer: 'answer' is null" in result.output
    assert "qa.jsonl line 2: doc_ids: 'harbour' matches no document" in result.output


def test_retrieval_metrics_credit_a_gold_id_written_without_extension():
    retrieved = [["ports/harbor.txt", "history.md"], ["history.md"]]
    metrics = retrieval_metrics(retrieved, [["harbor"], ["history"]], k=2)
    assert metrics["hit_at_k"] == 1.0 and metrics["mrr"] == 1.0 and metrics["recall_at_k"] == 1.0
    assert retrieval_metrics([["a.md", "a.md"]], [["a", "a.md"]], k=2)["recall_at_k"] == 0.5  # one doc, credited once


# --- the registry: read-only and full --------------------------------------------------------------


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def readonly_dir(tmp_path):
    """A real read-only bind mount; else a folder without write permission (non-root); else a folder
    under a regular file, which no one can create."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0 and _mount("--bind", str(folder), str(folder)):
        if _mount("-o", "remount,ro,bind", str(folder)):
            yield folder
            subprocess.run(["umount", str(folder)], check=True)
            return
        subprocess.run(["umount", str(folder)], check=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    (tmp_path / "file").write_text("")
    yield tmp_path / "file" / "registry"


@pytest.fixture
def full_dir(tmp_path):
    """A real 64 KiB tmpfs filled to the last byte (root with mount rights), else skip with the reason."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here (needs root with mount rights); the read-only case still runs")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_registry_is_refused_with_the_path_and_the_fix(readonly_dir):
    with pytest.raises(RegistryError) as info:
        check_registry_writable(readonly_dir / "registry" if readonly_dir.exists() else readonly_dir)
    message = str(info.value)
    assert "is not writable (" in message and str(readonly_dir) in message
    assert message.endswith("set ADAPTFLOW_REGISTRY to a writable folder")


def test_full_registry_is_refused(full_dir):
    with pytest.raises(RegistryError, match=r"registry .*full is not writable \(No space left on device\)"):
        check_registry_writable(full_dir)


def test_a_writable_registry_passes_and_keeps_nothing(tmp_path):
    check_registry_writable(tmp_path / "registry", "t")
    assert list((tmp_path / "registry").iterdir()) == []


def test_check_before_run_names_inputs_then_registry(ws, readonly_dir):
    spec_file = write_spec(ws, [{"question": "q", "answer": ""}])
    with pytest.raises(SpecError, match="line 1: answer: 'answer' is empty"):
        check_before_run(load_spec(spec_file, ws), spec_file, registry_root=readonly_dir)
    spec_file = write_spec(ws, [{"question": "q", "answer": "a"}])
    with pytest.raises(RegistryError, match="not writable"):
        check_before_run(load_spec(spec_file, ws), spec_file, registry_root=readonly_dir)


# --- no gates, no promotion ---------------------------------------------------------------------


def test_without_gates_only_latest_moves(tmp_path):
    from components.registry import manifest_base

    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "x.json").write_text("{}")
    registry = Registry(tmp_path / "registry")
    spec = {"name": "t"}
    base = {"id": "m", "revision": None, "weights_hash": None, "path": "/m"}
    manifest = manifest_base(spec, base_model=base, metrics={"accuracy": 0.0}, gates=evaluate_gates({}, {}))
    version = registry.publish("t", staging, manifest, aliases=["latest", "production"])
    assert version.moved_aliases == ("latest",) and registry.aliases("t") == {"latest": 1}
    assert version.gate_status == "unknown"
    registry.promote("t@v1", "production")  # a person may still decide by hand
    assert registry.aliases("t") == {"latest": 1, "production": 1}
    assert not evaluate_gates({}, {}).promotable and evaluate_gates({"accuracy": ">= 0"}, {"accuracy": 0.0}).promotable


def test_plan_says_which_aliases_move(ws):
    from components.routing.plan import make_plan
    from flows.cmd_spec import render_plan

    spec_file = write_spec(ws, [{"question": "q", "answer": "a"}])
    text = render_plan(make_plan(load_spec(spec_file, ws), str(spec_file)))
    assert "## promotion\n  no evaluation.gates: a run moves only `latest`; `production` moves only when at least " \
           "one gate is declared and passes" in text
    spec_file = write_spec(ws, [{"question": "q", "answer": "a"}], gates='{hit_at_k: ">= 0.5"}')
    text = render_plan(make_plan(load_spec(spec_file, ws), str(spec_file)))
    assert "`latest` and `production` move only if every gate passes (hit_at_k >= 0.5); otherwise no alias moves" in text
