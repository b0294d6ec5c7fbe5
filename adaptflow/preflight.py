"""Checks that run before any model loads: at `adaptflow validate` and at the start of every run.

What a run would otherwise find out after training: a bad evaluation row (read only after
training and evaluation), a document that cannot be read, a gold `doc_ids` entry that names
no document (hit@k 0.0, silently), a registry that cannot be written (after training and
evaluation). Behavior data is read here too, every row as training reads it (else a bad row shows only
after the route probe has loaded the model); `validate` also prints its rows per split and format.
Each problem is a `SpecIssue`: the file, the line, the field and the fix.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import uuid
from pathlib import Path

from components.spec import BehaviorDataSpec, TaskSpec
from components.spec.evalset import eval_lines, id_spellings, resolve_gold_ids
from components.spec.load import SpecError, SpecIssue
from components.store.objectstore import is_url
from components.training.data import DataError, DataSplits, load_splits
from components.training.data_files import DataSource, RowRef

MAX_ISSUES = 50  # every row is checked; the first 50 problems are listed, then a count


def _answer_problem(value: object) -> str | None:
    if value is None:
        return "'answer' is null; write the expected answer (a string, or a list of acceptable answers)"
    if isinstance(value, list):
        if not value or not all(isinstance(a, str | int | float) and not isinstance(a, bool) and str(a).strip()
                                for a in value):
            return "'answer' is a list, so it must hold non-empty strings; give one answer or a list of acceptable ones"
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"'answer' is a {type(value).__name__}; write the expected answer as a string"
    if not str(value).strip():
        return "'answer' is empty; write the expected answer (an empty gold answer scores every prediction as wrong)"
    return None


def _query_problem(row: dict) -> str | None:
    if "question" in row:
        q = row["question"]
        return None if isinstance(q, str) and q.strip() else "'question' must be a non-empty string; write the question"
    messages = row.get("messages")
    if messages is None:
        return "needs 'question' or 'messages'; add one of them"
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
        return "'messages' must be a list of {\"role\", \"content\"} objects; fix the row"
    if not any(m["role"] == "user" and isinstance(m["content"], str) and m["content"].strip() for m in messages):
        return "'messages' has no non-empty user message; add the question as {\"role\": \"user\", ...}"
    return None


def _row_problems(row: object) -> list[tuple[str, str]]:
    if not isinstance(row, dict):
        return [("", "expected an object {\"question\", \"answer\", \"doc_ids\"?}; fix the line")]
    out = []
    if (problem := _query_problem(row)) is not None:
        out.append(("question", problem))
    if "answer" not in row:
        out.append(("answer", "missing field 'answer'; every evaluation row needs the expected answer"))
    elif (problem := _answer_problem(row["answer"])) is not None:
        out.append(("answer", problem))
    gold = row.get("doc_ids")
    if gold is not None and (not isinstance(gold, list) or not all(isinstance(g, str | int) for g in gold)):
        out.append(("doc_ids", "'doc_ids' must be a list of document ids, e.g. [\"harbor.md\"]; fix the value"))
    return out


def eval_rows(path: Path) -> tuple[list[tuple[int, dict]], list[SpecIssue]]:
    """Every row of an evaluation jsonl with its line number, and every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return [], [SpecIssue(file, None, "", f"not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8")]
    except OSError as exc:
        return [], [SpecIssue(file, None, "", f"cannot read it ({exc.strerror}); check evaluation.data")]
    rows, issues = [], []
    for lineno, row, problem in eval_lines(text):
        if problem is not None:
            issues.append(SpecIssue(file, lineno, "", problem))
            continue
        problems = _row_problems(row)
        issues += [SpecIssue(file, lineno, field, message) for field, message in problems]
        if not problems:
            rows.append((lineno, row))
    if not rows and not issues:
        issues.append(SpecIssue(file, None, "", "no rows; add {\"question\", \"answer\"} lines (one JSON object per line)"))
    return rows, issues


def _closest(gold: str, doc_ids: list[str]) -> str:
    spelled = {s: d for d in doc_ids for s in id_spellings(d)}
    near = difflib.get_close_matches(gold, list(spelled), n=6, cutoff=0.3)
    names = list(dict.fromkeys(spelled[s] for s in near))[:3] or doc_ids[:3]
    return ", ".join(names)


def gold_id_issues(file: str, rows: list[tuple[int, dict]], doc_ids: list[str]) -> list[SpecIssue]:
    """Each gold doc id must name exactly one document (id, path without extension, or unique stem)."""
    issues = []
    for lineno, row in rows:
        gold = [str(g) for g in row.get("doc_ids") or []]
        resolved, unknown = resolve_gold_ids(gold, doc_ids)
        for g in unknown:
            named = sorted(d for d in doc_ids if g in id_spellings(d))
            what = (f"names {len(named)} documents ({', '.join(named)})" if len(named) > 1
                    else f"matches no document (closest: {_closest(g, doc_ids)})")
            issues.append(SpecIssue(
                file, lineno, "doc_ids", f"'{g}' {what} in knowledge.documents; "
                "write the path relative to the documents folder, with or without its extension, or a stem no "
                "other file shares"))
        if len(set(resolved)) < len(resolved):
            issues.append(SpecIssue(file, lineno, "doc_ids", "names the same document twice; remove the repeat"))
    return issues


def _shown(path: Path) -> str:
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _data_note(splits: DataSplits, data: BehaviorDataSpec) -> str:
    """'behavior data: train 240 chat rows (data/train.jsonl, jsonl); eval 60 chat rows (...)'."""
    def where(source: DataSource) -> str:
        return f"{_shown(source.path)}, {source.label}"

    train = f"train {len(splits.train)} {data.format} rows ({where(splits.train_source)})"
    if splits.eval_source is not None:
        held = f"eval {len(splits.eval)} {data.format} rows ({where(splits.eval_source)})"
    else:
        held = f"eval {len(splits.eval)} rows held out of train (eval_split {data.eval_split})"
    return f"behavior data: {train}; {held}"


def _data_issue(ref: RowRef, message: str, data: BehaviorDataSpec) -> SpecIssue:
    in_eval = data.eval is not None and Path(ref.file).is_relative_to(data.eval)
    key = "behavior.data.eval" if in_eval and not Path(ref.file).is_relative_to(data.train) else "behavior.data.train"
    if ref.unit == "line" or ref.n is None:
        return SpecIssue(ref.file, ref.n, key, message)
    return SpecIssue(ref.file, None, key, f"{ref.unit} {ref.n}: {message}")  # parquet, datasets: no lines


def behavior_data_report(spec: TaskSpec, spec_file: str | Path) -> tuple[list[str], list[SpecIssue]]:
    """Behavior data, every row read as training reads it: (a line of counts per split, every bad row)."""
    if spec.behavior is None:
        return [], []
    data = spec.behavior.data
    try:
        splits = load_splits(data)
    except DataError as exc:
        problems = exc.problems or ((RowRef(str(spec_file)), str(exc)),)
        return [], [_data_issue(ref, message, data) for ref, message in problems]
    return [_data_note(splits, data)], []


def inputs_report(spec: TaskSpec, spec_file: str | Path) -> tuple[list[str], list[SpecIssue]]:
    """(notes on what was read, every problem): what `adaptflow validate` prints."""
    notes, issues = behavior_data_report(spec, spec_file)
    return notes, _capped(_sorted(issues + _other_inputs(spec, spec_file), spec_file))


def check_inputs(spec: TaskSpec, spec_file: str | Path) -> list[SpecIssue]:
    """Behavior data, evaluation rows, documents and gold doc ids: every problem, before any model loads."""
    return inputs_report(spec, spec_file)[1]


def _sorted(issues: list[SpecIssue], spec_file: str | Path) -> list[SpecIssue]:
    return sorted(issues, key=lambda i: (i.file != str(spec_file), i.file, i.line or 0))


def _capped(issues: list[SpecIssue]) -> list[SpecIssue]:
    if len(issues) > MAX_ISSUES:
        more = len(issues) - MAX_ISSUES
        issues = issues[:MAX_ISSUES] + [SpecIssue(issues[MAX_ISSUES].file, None, "", f"... and {more} more problems")]
    return issues


def _other_inputs(spec: TaskSpec, spec_file: str | Path) -> list[SpecIssue]:
    """Evaluation rows, documents and gold doc ids."""
    issues: list[SpecIssue] = []
    rows: list[tuple[int, dict]] = []
    ev = spec.evaluation
    if ev is not None and ev.data is not None:
        rows, issues = eval_rows(Path(ev.data))
    if spec.knowledge is not None:
        from vectorstore.documents import DocumentError, knowledge_documents

        try:
            docs = knowledge_documents(spec.knowledge)
        except DocumentError as exc:
            issues.append(SpecIssue(str(spec_file), None, "knowledge.documents", str(exc)))
        else:
            issues += gold_id_issues(str(ev.data), rows, [d.doc_id for d in docs]) if rows else []
        issues += _reader_model_issues(spec, spec_file)
    return issues


def _reader_model_issues(spec: TaskSpec, spec_file: str | Path) -> list[SpecIssue]:
    """With `knowledge.reader_model`, a registered reader (NAME@REF) must be an adapter of that model (issue 24)."""
    if spec.knowledge.reader_model is None or "@" not in spec.knowledge.reader:
        return []
    from components.registry.files import RegistryError
    from components.training.reader import ReaderError, registered_reader

    try:
        registered_reader(spec, spec.knowledge.reader)
    except (ReaderError, RegistryError) as exc:
        return [SpecIssue(str(spec_file), None, "knowledge.reader", str(exc))]
    return []


def check_registry_writable(root: Path, name: str | None = None) -> None:
    """Create and remove a probe file where the version will be published; raise RegistryError with the fix.

    A read-only or full registry used to fail only at publish, after training and evaluation. A disk
    with a few KB left passes this probe and can still fail at publish (docs/security.md)."""
    from components.registry import RegistryError

    if is_url(str(root)):
        return _check_store_writable(str(root))
    root = Path(root)
    target = root / name if name and (root / name).is_dir() else root
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=target)
        try:
            os.write(fd, b"\0" * 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise RegistryError(
            f"the registry {target} is not writable ({exc.strerror or exc}); checked before training so no work is "
            "lost. Fix: make it writable or free space there, or set ADAPTFLOW_REGISTRY to a writable folder"
        ) from None


def _check_store_writable(url: str) -> None:
    """The object-store registry: one small PUT and DELETE with the credentials the publish will use."""
    from components.registry import RegistryError
    from components.store.objectstore import ObjectStore

    probe = f".write-probe-{uuid.uuid4().hex[:12]}"
    try:
        store = ObjectStore(url)
        store.write_json(probe, {})
        store.delete(probe)
    except (OSError, ValueError, ImportError) as exc:
        raise RegistryError(
            f"the registry {url} is not writable ({exc}); checked before training so no work is lost. Fix: check the "
            "bucket, the credentials (AWS_* / ~/.aws) and the endpoint (AWS_ENDPOINT_URL_S3), or set ADAPTFLOW_REGISTRY "
            "to a writable folder") from None


def check_before_run(spec: TaskSpec, spec_file: str | Path, registry_root: Path | None = None) -> None:
    """Everything a run can check up front: inputs (SpecError) and the registry (RegistryError)."""
    from components.registry import Registry

    issues = check_inputs(spec, spec_file)
    if issues:
        raise SpecError(issues)
    check_registry_writable(Registry(registry_root).root, spec.name)
