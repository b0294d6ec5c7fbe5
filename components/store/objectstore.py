"""Bytes on an object store (any fsspec URL: s3://, gs://, memory://): the registry's and stage store's remote half.

An object store has no rename and no folder locks, so the local recipe (temp folder, fsync,
`rename`, `FileLock`) becomes: upload under a temporary prefix, then publish by writing one small
JSON object last, and trust only what that object's hashes vouch for. The one atomic primitive
used is an exclusive create (`PUT` with `If-None-Match: *`; S3 since 2024-08, GCS generation 0),
which gives the lock lease below and first-writer-wins markers. Credentials and the endpoint come
from the store's own configuration (for S3: AWS_* variables, ~/.aws, AWS_ENDPOINT_URL_S3).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import fsspec

from components.store.fileio import (
    RegistryError,
    RegistryIntegrityError,
    dumps,
    rename_into_place,
    seal_dir,
    sha256_file,
    stage_dir,
    walk_files,
)

LEASE_S = 900.0  # a lock older than this is abandoned: its holder died (a live holder renews it)


def is_url(root: object) -> bool:
    """True for a remote fsspec URL; local paths and file:// stay on the local code path."""
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def url_from_path(root: object) -> object:
    """Undo what `Path("s3://bucket/x")` did ("s3:/bucket/x"): a CLI `--root` typed as a Path arrives so.

    Only a known fsspec protocol is restored, so a local folder whose name has a colon stays a folder.
    """
    if isinstance(root, PurePath) and (m := re.match(r"^([a-z][a-z0-9+.-]*):/(?!/)(.*)$", str(root))):
        if m.group(1) in fsspec.available_protocols() and m.group(1) != "file":
            return f"{m.group(1)}://{m.group(2)}"
    return root


class LockTimeout(RegistryError):
    """The object-store lock stayed held by a live owner for longer than the caller would wait."""


class ObjectStore:
    """Relative keys under one URL prefix, with hashed uploads, verified downloads and an exclusive create."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        # listings are cached by default; a registry must see the other publishers' writes
        self.fs, self.base = fsspec.core.url_to_fs(self.url, use_listings_cache=False, skip_instance_cache=True)
        self.base = self.base.rstrip("/")

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def full_url(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    # --- small objects ------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(self.key(rel))

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.key(rel))
        except FileNotFoundError:
            return None

    def read_json(self, rel: str) -> Any | None:
        raw = self.read_bytes(rel)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RegistryIntegrityError(f"{self.full_url(rel)} is not readable JSON ({exc})", [rel]) from exc

    def write_json(self, rel: str, data: Any) -> None:
        """One PUT: readers see the old object or the new one, never half (object stores replace whole objects)."""
        self.fs.pipe_file(self.key(rel), dumps(data).encode())

    def create_json(self, rel: str, data: Any) -> bool:
        """Write `rel` only if it does not exist; False when another writer got there first."""
        try:
            self.fs.pipe_file(self.key(rel), dumps(data).encode(), mode="create")
            return True
        except FileExistsError:
            return False
        except OSError:
            # some stores answer a lost race with a generic 412; tell it apart from a real failure
            if self.exists(rel):
                return False
            raise

    def _replace(self, rel: str, data: Any, etag: str) -> bool:
        """Overwrite `rel` only while it is still the object with `etag` (S3 `If-Match`)."""
        try:
            self.fs.pipe_file(self.key(rel), dumps(data).encode(), IfMatch=etag)
            return True
        except (FileNotFoundError, OSError):
            return False

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm(self.key(rel), recursive=True)
        except FileNotFoundError:
            pass

    def children(self, rel: str) -> list[str]:
        """Names directly under the prefix `rel` (objects and sub-prefixes)."""
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.key(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries})

    # --- trees --------------------------------------------------------------------------------

    def upload_tree(self, src: Path, rel: str) -> dict[str, str]:
        """Upload every file of `src` under `rel`; return the sha256 of the bytes sent."""
        hashes: dict[str, str] = {}
        for name in walk_files(src):
            hashes[name] = sha256_file(src / name)
            self.fs.put_file(str(src / name), self.key(f"{rel}/{name}"))  # streamed; multipart when large
        return hashes

    def copy_tree(self, src_rel: str, dst_rel: str, names: list[str]) -> None:
        """Server-side copies (no bytes through this machine)."""
        for name in names:
            self.fs.copy(self.key(f"{src_rel}/{name}"), self.key(f"{dst_rel}/{name}"))

    def download_tree(self, rel: str, files: dict[str, str], dst: Path, marker: tuple[str, str] | None = None) -> Path:
        """Fetch `files` under `rel` into the new local folder `dst`, each checked against its sha256; `marker`
        (name, text) is written last (components.store.fileio: temp folder beside `dst`, fsync, one rename), so a reader
        of `dst` sees a complete, verified copy or nothing. A mismatch raises RegistryIntegrityError.
        """
        if dst.is_dir():
            return dst

        def fill(tmp: Path) -> None:
            for name in sorted(files):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self.key(f"{rel}/{name}"), str(tmp / name))

        tmp, facts = stage_dir(dst.parent, fill, prefix=f".{dst.name}.")
        bad = sorted(name for name, sha in files.items() if facts.get(name, {}).get("sha256") != sha)
        if bad:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryIntegrityError(
                f"{self.full_url(rel)}: {', '.join(bad)} do not match the manifest's sha256; the remote copy is "
                "damaged or was overwritten. Publish the run's outputs again to get a good version", bad)
        name, text = marker or (None, None)
        if name is None:
            rename_into_place(tmp, dst, existing="keep")  # a concurrent reader that finished first is as good
        else:
            seal_dir(tmp, dst, name, text, text=str, existing="keep")
        return dst

    # --- the lock -----------------------------------------------------------------------------

    @contextmanager
    def lock(self, rel: str, timeout: float, lease_s: float = LEASE_S) -> Iterator[None]:
        """Hold `rel` (an exclusive-create lock object) for the duration of the block.

        Terraform's S3 backend locks the same way (`use_lockfile`). A lock whose lease ran out
        belongs to a holder that died; it is removed and the race to create starts again.
        """
        token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + timeout
        delay = 0.05
        while not self.create_json(rel, {"owner": token, "expires": time.time() + lease_s}):
            try:
                etag = self.fs.info(self.key(rel))["ETag"]
                held = self.read_json(rel) or {}
            except FileNotFoundError:
                continue  # released between our create and this read: race for it again
            if float(held.get("expires", 0)) < time.time():
                # the owner died; take the lock over only if it is still that same object (If-Match), so two
                # processes breaking it at once cannot both win
                if self._replace(rel, {"owner": token, "expires": time.time() + lease_s}, etag):
                    break
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"could not lock {self.full_url(rel)} within {timeout:.0f}s; {held.get('owner', 'someone')} holds it "
                    f"(lease ends in {float(held.get('expires', 0)) - time.time():.0f}s). Wait, or delete that object "
                    "if its owner is gone")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        try:
            yield
        finally:
            if (self.read_json(rel) or {}).get("owner") == token:
                self.delete(rel)
