"""Load a spec file into a `TaskSpec`, or fail with every error at once.

Each error names the file, the line, the key path and the fix; an unknown key gets a
"did you mean". Line numbers come from the YAML node tree, so they point at the key the
user wrote (or the nearest parent that exists).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from components.spec import TaskSpec

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecIssue:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else self.file
        return f"{where}: {self.path + ': ' if self.path else ''}{self.message}"


class SpecError(ValueError):
    def __init__(self, issues: list[SpecIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _node_lines(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _node_lines(value, path + (key.value,), out)
            out[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML, returning the data and a map from key path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecIssue(file, line, "", f"malformed YAML: {problem}; fix the syntax")]) from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _node_lines(node, (), lines)
    return data, lines


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    """The pydantic model whose fields are valid at `loc` (discriminator tags in loc are followed)."""
    model: type[BaseModel] = TaskSpec
    i = 0
    while i < len(loc):
        field = model.model_fields.get(str(loc[i]))
        if field is None:
            return None
        candidates = _models_in(field.annotation)
        if not candidates:
            return None
        i += 1
        if len(candidates) > 1 and i < len(loc):
            tagged = {m.model_fields[k].default: m for m in candidates for k in ("method", "type") if k in m.model_fields}
            if loc[i] in tagged:
                model = tagged[loc[i]]
                i += 1
                continue
            model = candidates[0]
        else:
            model = candidates[0]
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found.extend(_models_in(arg))
    if get_origin(annotation) is None and not found and hasattr(annotation, "__origin__"):
        found.extend(_models_in(annotation.__origin__))
    return found


def _strip_tags(loc: KeyPath, data: Any) -> KeyPath:
    """Drop the discriminator tags pydantic inserts into loc, so it matches the YAML keys."""
    out: list[str | int] = []
    cursor = data
    for part in loc:
        if isinstance(cursor, dict) and part in cursor:
            out.append(part)
            cursor = cursor[part]
        elif isinstance(cursor, list) and isinstance(part, int) and part < len(cursor):
            out.append(part)
            cursor = cursor[part]
        elif isinstance(cursor, dict) and isinstance(part, str) and (
            cursor.get("method") == part or cursor.get("type") == part or part in {"factory", "auto"}
        ):
            continue
        else:
            out.append(part)
            cursor = None
    return tuple(out)


def _line_for(loc: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


_LEADING_PATH = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*) (?:is|must|'|\()")


def _issue_from_error(err: dict, data: Any, lines: dict[KeyPath, int], file: str) -> SpecIssue:
    raw_loc = tuple(err["loc"])
    loc = _strip_tags(raw_loc, data)
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(tuple(p for p in raw_loc[:-1]))
        allowed = sorted(model.model_fields) if model else []
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
        hint = f"did you mean '{guess[0]}'?" if guess else "remove it"
        msg = f"unknown key '{loc[-1]}'; {hint} (allowed: {', '.join(allowed)})"
    elif kind == "missing":
        msg = f"required key '{loc[-1]}' is missing; add it"
    elif kind == "union_tag_invalid":
        msg = msg.replace("Input tag", "value").rstrip(".") + "; pick one of the listed values"
    elif kind.startswith(("int_", "float_", "bool_", "string_", "literal_", "list_", "dict_", "model_")) or kind in {
        "greater_than", "greater_than_equal", "less_than", "less_than_equal",
    }:
        msg = f"{msg} (got {err.get('input')!r}); fix the value"
    else:
        match = _LEADING_PATH.match(msg)
        if match:  # a cross-field rule names the key it is about
            rel = tuple(match.group(1).split("."))
            for candidate in (loc + rel, rel):
                if candidate in lines:
                    loc = candidate
                    break
    path = ".".join(str(p) for p in loc)
    return SpecIssue(file, _line_for(loc, lines), path, msg)


def load_spec(path: str | Path, workspace: str | Path | None = None, check_exists: bool = True) -> TaskSpec:
    """Read, validate and resolve a spec file. Raises SpecError listing every problem."""
    spec_path = Path(path)
    file = str(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([SpecIssue(file, None, "", f"cannot read the spec: {exc.strerror}; check the path")]) from None
    data, lines = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise SpecError([SpecIssue(file, 1, "", "the spec must be a YAML mapping (name:, goal:, ...); see docs/spec.md")])
    context = {
        "base_dir": spec_path.resolve().parent,
        "workspace": Path(workspace).resolve() if workspace else Path.cwd().resolve(),
        "check_exists": check_exists,
    }
    try:
        return TaskSpec.model_validate(data, context=context)
    except ValidationError as exc:
        issues = [_issue_from_error(e, data, lines, file) for e in exc.errors(include_url=False)]
        raise SpecError(sorted(issues, key=lambda i: (i.line or 0, i.path))) from None


def spec_to_dict(spec: TaskSpec) -> dict:
    """The resolved spec as plain JSON-able data (paths as strings), defaults filled in."""
    return spec.model_dump(mode="json")
