"""Compare two manifests: spec changes as key paths, metric deltas, files added/removed/changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Manifest keys that get their own section, or that differ between any two versions by design.
_OWN_SECTIONS = {"spec", "metrics", "files", "version", "created_at", "content_digest", "volatile", "name"}
ABSENT = "<absent>"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}. Lists stay whole values: a changed target_modules list reads
    better as old -> new than as per-index edits."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_values(old: Any, new: Any) -> dict[str, dict[str, Any]]:
    """Key paths whose value differs: {path: {"old": ..., "new": ...}}, ABSENT where a side lacks it."""
    a, b = flatten(old or {}), flatten(new or {})
    changes = {}
    for path in sorted(set(a) | set(b)):
        va, vb = a.get(path, ABSENT), b.get(path, ABSENT)
        if va != vb:
            changes[path] = {"old": va, "new": vb}
    return changes


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def diff_metrics(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every metric on either side: old, new, and delta = new - old when both are numbers."""
    a, b = flatten(old or {}), flatten(new or {})
    out = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        na, nb = _number(va), _number(vb)
        out[key] = {"old": va, "new": vb, "delta": None if na is None or nb is None else nb - na}
    return out


def diff_files(old: Mapping[str, str] | None, new: Mapping[str, str] | None) -> dict[str, Any]:
    a, b = dict(old or {}), dict(new or {})
    return {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "changed": sorted(k for k in set(a) & set(b) if a[k] != b[k]),
        "unchanged": sum(1 for k in set(a) & set(b) if a[k] == b[k]),
    }


def diff_manifests(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The sections `adaptflow registry diff` prints; `other` covers route, base_model, lineage, gates."""
    rest_a = {k: v for k, v in a.items() if k not in _OWN_SECTIONS}
    rest_b = {k: v for k, v in b.items() if k not in _OWN_SECTIONS}
    return {
        "same_content": a.get("content_digest") == b.get("content_digest"),
        "spec": diff_values(a.get("spec"), b.get("spec")),
        "metrics": diff_metrics(a.get("metrics"), b.get("metrics")),
        "files": diff_files(a.get("files"), b.get("files")),
        "other": diff_values(rest_a, rest_b),
    }
