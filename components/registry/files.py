"""Bytes on disk for the registry (components.registry): the manifest's JSON and the content digest.

Hashing, fsync, the temp-folder-then-rename recipe, the real-files-only walk and the integrity errors are
components.store.fileio's (re-exported here, so the object store beside it raises the same classes without importing
the registry); this module adds the registry's own rules (strict JSON, the digest).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from components.store.fileio import (  # noqa: F401  (the integrity errors live in store/, re-exported here)
    RegistryError,
    RegistryIntegrityError,
    dumps,
    sha256_file,
    walk_files,
    write_durable,
)

MANIFEST = "manifest.json"
# Keys the registry assigns at publish; a caller's manifest must not set them.
ASSIGNED_KEYS = ("version", "created_at", "content_digest", "files")
# What the content digest leaves out. `version` and `created_at` differ between two publishes of
# the same content by construction; `volatile` is where callers put values that change on every
# run without the result changing (wall times, latencies, host names, run ids).
DIGEST_EXCLUDED = frozenset({*ASSIGNED_KEYS, "volatile"})
VOLATILE_FILE = "volatile"  # what a file matched by `volatile_files` contributes to the digest


def hash_tree(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in walk_files(root)}


def copy_files(src: Path, dst: Path) -> None:
    """Copy every file of `src` (`walk_files`: real files only) into the folder `dst`."""
    for rel in walk_files(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)


def write_json_durable(path: Path, data: Any) -> None:
    write_durable(path, dumps(data), exclusive=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RegistryIntegrityError(f"{path} is not readable JSON ({exc}); restore it from a backup", [str(path)]) from exc


def to_json_data(value: Any, where: str = "manifest") -> Any:
    """A deep copy of `value` as plain JSON types; errors name the offending key path.

    Paths become strings (a manifest records where things are); tuples become lists. NaN and
    infinities are refused: they are not JSON and would make two equal results digest differently.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RegistryError(f"{where}: key {key!r} is not a string; JSON keys must be strings")
            out[key] = to_json_data(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [to_json_data(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise RegistryError(f"{where} is {value}, which JSON cannot hold; store null for a metric that was not measured")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Path):
        return value.as_posix()
    raise RegistryError(f"{where} is a {type(value).__name__}, not JSON data; convert it to str, number, list or dict")


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def is_volatile_file(rel: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(rel, p) for p in patterns)


def content_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 over the manifest minus `DIGEST_EXCLUDED`, and over every file's hash.

    Files matched by the manifest's `volatile_files` globs (e.g. "eval/report.md" with timings)
    count by name only: their bytes are verified on load but do not make a new version.
    """
    patterns = list(manifest.get("volatile_files") or [])
    files = {
        rel: VOLATILE_FILE if is_volatile_file(rel, patterns) else sha
        for rel, sha in (manifest.get("files") or {}).items()
    }
    stable = {k: v for k, v in manifest.items() if k not in DIGEST_EXCLUDED}
    return hashlib.sha256(canonical_json({"files": files, "manifest": stable})).hexdigest()
