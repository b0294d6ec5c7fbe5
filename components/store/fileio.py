"""Bytes on disk, done one way for every layer: hashing, durable and atomic writes, verified folders.

A floor module (docs/architecture.md): standard library only, importable from `components`,
`vectorstore`, `adaptflow` and `flows` alike. Every folder Adaptflow publishes (registry versions,
training checkpoints, the index folder, the model caches, stage outputs) is built the same way by
`publish_verified_dir`: fill a temp folder next to the target, fsync every file, hash them, write a
marker JSON (the folder's own format, holding those hashes) last, fsync, then one rename. A rename is
atomic, but only fsync makes sure the files it points at reached the disk first: without it a power
cut right after publishing could leave a visible folder with empty files. `verify_dir` checks a
folder against the hashes its marker recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

CHUNK = 1 << 22
Existing = Literal["replace", "keep", "error"]

__all__ = ["CHUNK", "adaptflow_home", "atomic_write", "atomic_write_json", "atomic_write_text", "file_facts", "file_problem",
           "fsync_path", "fsync_tree", "json_text", "publish_verified_dir", "rename_into_place", "seal_dir", "sha256_file",
           "stage_dir", "stat_stamp", "tree_files", "verify_dir", "write_durable",
           "RegistryError", "RegistryIntegrityError", "walk_files", "dumps"]


def adaptflow_home() -> Path:
    """Caches (converted models, embeddings, stage outputs): $ADAPTFLOW_HOME, default ~/.cache/adaptflow."""
    return Path(os.environ.get("ADAPTFLOW_HOME", Path.home() / ".cache" / "adaptflow"))


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stat_stamp(path: Path) -> list[int]:
    """(size, mtime, inode): unchanged means untouched since it was recorded (git's index does the same)."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def fsync_path(path: Path) -> None:
    """fsync a file (its bytes) or a folder (its entries: new names, renames; not available on Windows)."""
    if os.name != "posix" and Path(path).is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_files(root: Path) -> list[str]:
    """Every file under `root` as sorted POSIX relative paths (symlinked folders are not followed)."""
    found = []
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        found += [Path(dirpath, f).relative_to(root).as_posix() for f in filenames]
    return sorted(found)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder, deepest first."""
    for rel in tree_files(root):
        fsync_path(Path(root) / rel)
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        fsync_path(Path(dirpath))


def json_text(data: Any, *, indent: int | None = 2, **options: Any) -> str:
    """The JSON text Adaptflow writes: indented, one trailing newline (`options` go to `json.dumps`)."""
    return json.dumps(data, indent=indent, **options) + "\n"


def write_durable(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write `text` (UTF-8) and fsync it; `exclusive` refuses an existing file."""
    with open(path, "x" if exclusive else "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Replace `path` with what `write(temp path)` writes, so that readers see the old or the new file,
    never half of one: a temp file beside it, fsynced, then `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any, **options: Any) -> None:
    """`atomic_write_text` of `json_text(data, **options)`."""
    atomic_write_text(path, json_text(data, **options))


# --- verified folders -------------------------------------------------------------------------


def file_facts(path: Path) -> dict[str, Any]:
    """What a marker may record of a file: its sha256, its size and its stat stamp."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size, "stat": stat_stamp(path)}


def file_problem(path: Path, expected: str | Mapping[str, Any]) -> str | None:
    """None when the file matches `expected`, else 'missing', 'bytes' (size differs) or 'sha256'.

    `expected` is a sha256, or a mapping with `sha256` and optionally `bytes` and `stat`: a file whose
    stat stamp is the recorded one is trusted without reading it."""
    want = {"sha256": expected} if isinstance(expected, str) else expected
    if not Path(path).is_file():
        return "missing"
    if want.get("stat") is not None and stat_stamp(path) == want["stat"]:
        return None
    if want.get("bytes") is not None and Path(path).stat().st_size != want["bytes"]:
        return "bytes"
    return None if sha256_file(path) == want.get("sha256") else "sha256"


def verify_dir(folder: Path, files: Mapping[str, str | Mapping[str, Any]]) -> dict[str, str]:
    """{relative path: problem} for every recorded file that does not match (empty: the folder is intact)."""
    out = {}
    for rel, expected in files.items():
        try:
            problem = file_problem(Path(folder) / rel, expected)
        except OSError:
            problem = "missing"
        if problem is not None:
            out[rel] = problem
    return out


def stage_dir(parent: Path, fill: Callable[[Path], object], *, prefix: str,
              suffix: str = "") -> tuple[Path, dict[str, dict]]:
    """A temp folder `parent/<prefix><random><suffix>` filled by `fill(folder)`, every file fsynced;
    (folder, file facts). The caller seals it (`seal_dir`, `rename_into_place`) or removes it."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    try:
        fill(tmp)
        fsync_tree(tmp)
        return tmp, {rel: file_facts(tmp / rel) for rel in tree_files(tmp)}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def rename_into_place(tmp: Path, final: Path, existing: Existing = "replace") -> bool:
    """fsync `tmp`, rename it to `final`, fsync the parent. An existing `final` is swapped out (`replace`),
    kept (`keep`: another process published it first; returns False) or refused (`error`). `tmp` is gone
    afterwards either way."""
    try:
        fsync_path(tmp)
        if final.exists() and existing != "replace":
            if existing == "error":
                raise FileExistsError(f"{final} already exists")
            return False
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            final.rename(old)
        try:
            os.rename(tmp, final)
        except OSError:
            if old.exists() and not final.exists():
                old.rename(final)  # put the previous folder back
            if existing == "keep" and final.is_dir():  # a concurrent publisher won the rename
                return False
            raise
        fsync_path(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seal_dir(tmp: Path, final: Path, marker: str, data: Any, *, text: Callable[[Any], str] = json_text,
             existing: Existing = "replace") -> bool:
    """Write the marker last (fsynced), then `rename_into_place`."""
    try:
        write_durable(tmp / marker, text(data))  # a marker a killed commit left in a work folder is rewritten
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rename_into_place(tmp, final, existing)


def publish_verified_dir(final: Path, fill: Callable[[Path], object], marker: str,
                         record: Callable[[dict[str, dict]], Any], *, text: Callable[[Any], str] = json_text,
                         existing: Existing = "replace") -> Any:
    """Build `final` atomically: `fill(tmp)` writes the files into a temp folder next to it, every file is
    fsynced and hashed, `record(facts)` (facts: relative path -> `file_facts`) gives the marker's JSON,
    written last as `marker`; then one rename (see `seal_dir` for `existing`). Returns the marker data."""
    final = Path(final)
    tmp, facts = stage_dir(final.parent, fill, prefix=f".{final.name}.tmp-")
    try:
        data = record(facts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seal_dir(tmp, final, marker, data, text=text, existing=existing)
    return data


# The registry's integrity errors and file walk live here, on the floor, so that the object store (beside this
# module) raises the same classes as the registry without importing it (components.registry.files re-exports them).
class RegistryError(Exception):
    """A registry operation failed: unknown name/version/alias, bad input, a refused promotion."""


class RegistryIntegrityError(RegistryError):
    """A published version no longer matches its manifest (a file is missing, extra or modified)."""

    def __init__(self, message: str, files: list[str] | None = None):
        super().__init__(message)
        self.files = files or []


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


def dumps(data: Any) -> str:
    return json_text(data, ensure_ascii=False, allow_nan=False)
