"""Bytes on disk for the registry (components.registry): errors, file hashes, durable copies and writes, the content digest.

Durability matters because a version is published by renaming a temp folder: the rename is
atomic, but only fsync makes sure the files it points at reached the disk first. Without it a
power cut right after publish could leave a visible `v<N>` with empty files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from components.models import sha256_file


class RegistryError(Exception):
    """A registry operation failed: unknown name/version/alias, bad input, a refused promotion."""


class RegistryIntegrityError(RegistryError):
    """A published version no longer matches its manifest (a file is missing, extra or modified)."""

    def __init__(self, message: str, files: list[str] | None = None):
        super().__init__(message)
        self.files = files or []


CHUNK = 1 << 22
MANIFEST = "manifest.json"
# Keys the registry assigns at publish; a caller's manifest must not set them.
ASSIGNED_KEYS = ("version", "created_at", "content_digest", "files")
# What the content digest leaves out. `version` and `created_at` differ between two publishes of
# the same content by construction; `volatile` is where callers put values that change on every
# run without the result changing (wall times, latencies, host names, run ids).
DIGEST_EXCLUDED = frozenset({*ASSIGNED_KEYS, "volatile"})
VOLATILE_FILE = "volatile"  # what a file matched by `volatile_files` contributes to the digest


def walk_files(root: Path) -> list[str]:
    """Every file under `root` as sorted POSIX relative paths (empty folders are not content)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise RegistryError(
                    f"{os.path.join(dirpath, d)} is a symlink to a folder; the registry stores real "
                    "files only, so copy that folder into the staging folder instead"
                )
        for f in filenames:
            full = os.path.join(dirpath, f)
            if not os.path.isfile(full):
                raise RegistryError(f"{full} is a broken symlink or not a regular file; remove it or copy the real file in")
            found.append(Path(full).relative_to(root).as_posix())
    return sorted(found)


def hash_tree(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in walk_files(root)}


def fsync_path(path: Path) -> None:
    """fsync a file (its bytes) or a folder (its entries: new names, renames; not available on Windows)."""
    if os.name != "posix" and Path(path).is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_tree_hashed(src: Path, dst: Path) -> dict[str, str]:
    """Copy every file of `src` into the new folder `dst`, fsynced; return the hashes of the bytes written.

    Hashing while copying (rather than trusting an earlier hash of `src`) means the manifest
    describes exactly what landed in the version, even if `src` changes underneath us.
    """
    dst.mkdir(parents=True)
    hashes: dict[str, str] = {}
    for rel in walk_files(src):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(src / rel, "rb") as fin, open(target, "xb") as fout:
            while block := fin.read(CHUNK):
                digest.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        hashes[rel] = digest.hexdigest()
    for dirpath, _, _ in sorted(os.walk(dst), key=lambda t: -len(t[0])):
        fsync_path(Path(dirpath))
    return hashes


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json_durable(path: Path, data: Any) -> None:
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(dumps(data))
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace `path` so that readers see the old or the new content, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dumps(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


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
