"""The index folder on disk: index.faiss + docstore.jsonl + index.json, written atomically, verified on read.

index.json records the sha256 and size of every other file; `open_index_dir` refuses a folder
whose files do not match (truncated, bit-flipped, swapped), naming the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
from filelock import FileLock

from components.store.fileio import publish_verified_dir, verify_dir
from vectorstore.docstore import DOCSTORE_FILE, read_docstore

INDEX_FILE, INFO_FILE = "index.faiss", "index.json"
FORMAT = "adaptflow-index/1"
# How this build happened, not what it holds: wall times, when, and how much came from caches.
# They stay in the returned info (and a registry manifest's volatile section) but out of index.json,
# so two builds of the same corpus write the same bytes and register as one version.
VOLATILE_KEYS = ("created_at", "build_seconds", "embedder_load_seconds", "update")
VOLATILE_COUNTS = ("embedded", "cached", "kept", "converted", "conversions_cached")


def split_volatile(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what index.json holds, the build's volatile facts)."""
    stable = {k: v for k, v in info.items() if k not in VOLATILE_KEYS}
    volatile = {k: info[k] for k in VOLATILE_KEYS if k in info}
    counts = info.get("counts")
    if isinstance(counts, dict):
        stable["counts"] = {k: v for k, v in counts.items() if k not in VOLATILE_COUNTS}
        volatile["counts"] = {k: v for k, v in counts.items() if k in VOLATILE_COUNTS}
    return stable, volatile


class IndexIntegrityError(ValueError):
    """An index folder that is incomplete, damaged, or does not match its index.json."""


def read_info(index_dir: Path) -> dict[str, Any]:
    path = Path(index_dir) / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexIntegrityError(f"{path}: missing; {index_dir} is not an Adaptflow index folder (build one with `adaptflow index SPEC`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexIntegrityError(f"{path}: not valid JSON ({exc}); the file is damaged, rebuild the index") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexIntegrityError(f"{path}: format is {info.get('format') if isinstance(info, dict) else None!r}, expected {FORMAT!r}; rebuild the index")
    return info


def verify_files(index_dir: Path, info: dict[str, Any]) -> None:
    """Check each file's size and sha256 against index.json."""
    for name, problem in verify_dir(index_dir, info["files"]).items():
        path = Path(index_dir) / name
        if problem == "missing":
            raise IndexIntegrityError(f"{path}: missing (listed in index.json); restore the folder or rebuild the index")
        if problem == "bytes":
            raise IndexIntegrityError(f"{path}: {path.stat().st_size} bytes but index.json records "
                                      f"{info['files'][name]['bytes']} (truncated or replaced); rebuild the index")
        raise IndexIntegrityError(f"{path}: sha256 does not match index.json (the file is corrupted); rebuild the index")


def read_faiss(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexIntegrityError(f"{path}: FAISS cannot read it ({str(exc).splitlines()[-1][:200]}); rebuild the index") from None


def open_index_dir(index_dir: Path, verify: bool = True) -> tuple[dict[str, Any], faiss.Index, dict[int, dict[str, Any]]]:
    """(index.json, the FAISS index, docstore rows by id), checked against each other."""
    from vectorstore.faiss_index import index_ids, set_params

    index_dir = Path(index_dir)
    info = read_info(index_dir)
    if verify:
        verify_files(index_dir, info)
    shards = info["index"].get("shards", 1)
    if shards > 1:
        from vectorstore.index_shards import read_shards

        index = read_shards(index_dir, shards, info["embedder"]["dim"], read_faiss)
    else:
        index = read_faiss(index_dir / INDEX_FILE)
    rows = read_docstore(index_dir / DOCSTORE_FILE)
    ids = set(index_ids(index).tolist())
    if len(ids) != index.ntotal or ids != set(rows):
        raise IndexIntegrityError(
            f"{index_dir / DOCSTORE_FILE}: its {len(rows)} ids are not the {index.ntotal} ids in {INDEX_FILE}; rebuild the index"
        )
    if index.ntotal != info["counts"]["vectors"]:
        raise IndexIntegrityError(f"{index_dir / INDEX_FILE}: {index.ntotal} vectors but index.json records {info['counts']['vectors']}; rebuild the index")
    set_params(index, info["index"]["params"])
    return info, index, rows


def write_index_dir(out_dir: Path, writers: dict[str, Callable[[Path], None]], info: dict[str, Any]) -> dict[str, Any]:
    """Write each file via its writer into a temp folder next to out_dir, record their hashes in index.json,
    then swap it in (components.store.fileio.publish_verified_dir).

    index.json gets `info` without its volatile facts (`split_volatile`); the full info is returned."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    full: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        for name, write in writers.items():
            write(tmp / name)

    def record(facts: dict[str, dict]) -> dict[str, Any]:
        files = {name: {"sha256": facts[name]["sha256"], "bytes": facts[name]["bytes"]} for name in writers}
        full.update(info, files=files)
        return split_volatile(full)[0]

    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        publish_verified_dir(out_dir, fill, INFO_FILE, record)
    return full
