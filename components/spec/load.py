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

from components.spec import AdapterBase, TaskSpec, adapter_class, adapter_methods

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


# Bounds on what a spec's YAML may expand to. A real spec has a few hundred nodes and a depth
# under 10; a "billion laughs" file (9 anchors of 9 aliases each) expands to ~10^9 nodes, and
# walking that took 42 s and ended in MemoryError. The composed graph is checked before anything
# walks it expanded, so such a file is refused in milliseconds (docs/spec.md, "Bounds").
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while it composes (the composer recurses per level)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(mark.line + 1, f"more than {MAX_ALIASES} aliases (*name); a spec needs a few at most: "
                                              "write the values out")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels; a spec is a few levels deep: "
                                          "flatten the structure")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, depth: int, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the tree once every alias is expanded; refuses cycles, depth and size past the bounds."""
    if id(node) in active:
        raise _Refused(node.start_mark.line + 1, "an alias refers to the node that contains it (a recursive anchor); "
                                                 "remove the self-reference")
    if depth > MAX_DEPTH:
        raise _Refused(node.start_mark.line + 1, f"aliases expand to a nesting deeper than {MAX_DEPTH} levels; "
                                                 "write the values out")
    if id(node) in memo:
        return memo[id(node)]
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    active.add(id(node))
    size = 1 + sum(_expanded_size(child, depth + 1, memo, active) for child in children)
    active.discard(id(node))
    if size > MAX_NODES:
        raise _Refused(node.start_mark.line + 1, f"aliases expand this spec to more than {MAX_NODES:,} values "
                                                 "(a YAML alias bomb?); a spec needs no more: write the values out")
    memo[id(node)] = size
    return size


def _node_lines(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int], dups: dict[tuple[str, int, int], None]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                if key.value in seen:
                    where = ".".join(str(p) for p in path + (key.value,))
                    dups[(where, seen[key.value], line)] = None
                seen.setdefault(key.value, line)
            out[path + (key.value,)] = line
            _node_lines(value, path + (key.value,), out, dups)
            out[path + (key.value,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out, dups)


def _compose(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    """Compose once, check the bounds and duplicate keys, then construct (which flattens merge keys)."""
    loader = _BoundedLoader(text)
    lines: dict[KeyPath, int] = {}
    dups: dict[tuple[str, int, int], None] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _expanded_size(node, 0, {}, set())
        _node_lines(node, (), lines, dups)
        if dups:
            raise SpecError([
                SpecIssue(file, second, where, f"duplicate key: it appears on line {first} and line {second}, "
                                               "and YAML would silently keep only the last; remove one")
                for where, first, second in dups
            ])
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML, returning the data and a map from key path to 1-based line number.

    Refused with a SpecError: malformed YAML, duplicate keys (YAML would keep the last one
    silently), and anything past the bounds above (aliases, nesting, expanded size)."""
    try:
        return _compose(text, file)
    except _Refused as exc:
        raise SpecError([SpecIssue(file, exc.line, "", f"refused: {exc.message}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecIssue(file, line, "", f"malformed YAML: {problem}; fix the syntax")]) from None
    except RecursionError:
        raise SpecError([SpecIssue(file, None, "", f"refused: nesting too deep to read; a spec is at most "
                                                   f"{MAX_DEPTH} levels deep: flatten the structure")]) from None


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
    if annotation is AdapterBase:  # the adapter union: every method's spec class
        return [adapter_class(m) for m in adapter_methods()]
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
    elif kind == "finite_number" or kind.startswith(("int_", "float_", "bool_", "string_", "literal_", "list_", "dict_", "model_")) or kind in {
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


def _read_spec_text(spec_path: Path, file: str) -> str:
    try:
        with open(spec_path, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError([SpecIssue(file, None, "", f"cannot read the spec: {exc.strerror}; check the path")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([SpecIssue(file, None, "", f"refused: the spec is larger than {MAX_SPEC_BYTES >> 20} MiB; "
                                                   "a spec is a short YAML file: keep data in the files it names")])
    try:
        text = raw.decode("utf-8")
        bad, why = (raw.index(0), "is NUL") if "\x00" in text else (None, "")
    except UnicodeDecodeError as exc:
        bad, why = exc.start, "is not UTF-8"
    if bad is not None:
        raise SpecError([SpecIssue(file, raw[:bad].count(b"\n") + 1, "", f"not a text file (byte {bad} {why}); "
                                   "a spec is a UTF-8 YAML file: check that you passed the right file")])
    return text


def load_spec(path: str | Path, workspace: str | Path | None = None, check_exists: bool = True) -> TaskSpec:
    """Read, validate and resolve a spec file. Raises SpecError listing every problem."""
    spec_path = Path(path)
    file = str(path)
    text = _read_spec_text(spec_path, file)
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


def spec_error_at(spec_file: str | Path, loc: KeyPath, message: str) -> SpecError:
    """An error about key `loc` found after loading (e.g. checked against the model), with the key's line."""
    file = str(spec_file)
    try:
        _, lines = parse_yaml(Path(spec_file).read_text(encoding="utf-8"), file)
    except (OSError, UnicodeDecodeError, SpecError):
        lines = {}
    return SpecError([SpecIssue(file, _line_for(loc, lines), ".".join(str(p) for p in loc), message)])


def spec_to_dict(spec: TaskSpec) -> dict:
    """The resolved spec as plain JSON-able data (paths as strings), defaults filled in."""
    return spec.model_dump(mode="json")
