"""The registry on an object store: `Registry("s3://bucket/registry")` (or `ADAPTFLOW_REGISTRY=s3://...`).

Same layout and interface as the local registry (components.registry; both are registry_core.RegistryBase); what changes is how a
version appears, since an object store has no rename:

```
<url>/<name>/.tmp-<time>-<id>/...    1. upload, outside the lock (the slow part)
<url>/<name>/.lock                   2. lock object, created with If-None-Match (objectstore.lock)
<url>/<name>/v<N>/...                3. under the lock: server-side copy from the temp prefix
<url>/<name>/v<N>/manifest.json      4. written last: the moment of publication
<url>/<name>/aliases.json            5. aliases move, still under the lock; then unlock, delete the temp
```

A reader lists only `v<N>/` prefixes that hold a manifest, and trusts a version's files only when
their sha256 matches it: `open` downloads them into `$ADAPTFLOW_HOME/registry-cache/<content
digest>/` (checking each hash on the way), so a version is fetched once per machine and every later
load reads the local copy, verified as the local registry verifies its folders.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.registry.core import (
    ALIASES,
    LOCK,
    NAME_RE,
    STALE_TMP_S,
    TMP_PREFIX,
    VERSION_DIR_RE,
    RegistryBase,
    Version,
    _chosen_root,
)
from components.registry.files import (
    MANIFEST,
    RegistryError,
    RegistryIntegrityError,
    copy_files,
    dumps,
)
from components.store.fileio import adaptflow_home, publish_verified_dir
from components.store.objectstore import ObjectStore

log = logging.getLogger(__name__)
TMP_RE = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)-")


class ObjectRegistry(RegistryBase):
    """A registry under a remote fsspec URL; versions are opened from a local, content-addressed cache."""

    def __init__(self, root: str | None = None, *, lock_timeout: float = 600.0, cache: Path | None = None):
        self.store = ObjectStore(str(_chosen_root(root)))
        self.root = self.store.url  # type: ignore[assignment]  # a URL, used in messages only
        self.lock_timeout = lock_timeout
        self.cache = Path(cache) if cache else adaptflow_home() / "registry-cache"

    # --- publish ---------------------------------------------------------------------------

    def publish(
        self, name: str, staging: Path, manifest: Mapping[str, Any], *, aliases: Sequence[str] = ("latest",)
    ) -> Version:
        data, digest = self._prepare(name, staging, manifest, aliases)
        if found := self._find_digest(name, digest):
            return found
        staging = Path(staging)
        tmp = f"{name}/{TMP_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:12]}"
        try:
            sent = self.store.upload_tree(staging, tmp)
            if sent != data["files"]:
                changed = sorted({rel for rel, _ in set(sent.items()) ^ set(data["files"].items())})
                raise RegistryError(f"{staging} changed while it was being published ({', '.join(changed)}); "
                                    "let the run finish writing, then publish again")
            with self._lock(name):
                self._clean_stale(name)
                if found := self._find_digest(name, digest):  # a concurrent publisher won
                    return found
                version = self._commit_remote(name, tmp, data, digest, aliases)
        finally:
            self.store.delete(tmp)
        self._cache_local(staging, version)
        return version

    def _commit_remote(self, name: str, tmp: str, data: dict[str, Any], digest: str, aliases: Sequence[str]) -> Version:
        from datetime import UTC, datetime

        number = max(self._prefix_numbers(name), default=0) + 1  # a manifest-less v<N> still takes its number
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        full = {"version": number, "name": name, "created_at": created_at, "content_digest": digest, **data}
        full["files"] = full.pop("files")
        final = f"{name}/v{number}"
        self.store.copy_tree(tmp, final, sorted(data["files"]))
        if not self.store.create_json(f"{final}/{MANIFEST}", full):
            raise RegistryError(f"{self.root}/{final}/{MANIFEST} appeared while this publisher held the lock; "
                                "another writer ignores the lock there. Stop it, then publish again")
        moved = self._move_aliases_locked(name, number, aliases, full)
        return Version(name, number, self._cache_path(full), full, created=True, moved_aliases=moved)

    def _cache_local(self, staging: Path, version: Version) -> None:
        """The publisher already has the bytes: seed the cache so opening this version downloads nothing."""
        if version.path.is_dir():
            return

        def record(facts: dict[str, dict]) -> dict:
            if {rel: f["sha256"] for rel, f in facts.items()} != version.files:
                raise OSError(f"{staging} changed since it was published")
            return version.manifest

        try:
            publish_verified_dir(version.path, lambda tmp: copy_files(staging, tmp), MANIFEST, record, text=dumps,
                                 existing="keep")
        except OSError as exc:
            log.info("not caching %s locally (%s); the first open downloads it", version.ref, exc)

    def _clean_stale(self, name: str) -> None:
        """Under the lock: drop temp prefixes a day old and versions whose publisher died before the manifest."""
        for entry in self.store.children(name):
            if (m := TMP_RE.match(entry)) and time.time() - int(m.group(1)) > STALE_TMP_S:
                self.store.delete(f"{name}/{entry}")
        for number in sorted(set(self._prefix_numbers(name)) - set(self._numbers(name))):
            log.warning("%s/%s/v%d has no manifest (its publisher died mid-copy); removing it", self.root, name, number)
            self.store.delete(f"{name}/v{number}")

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with self.store.lock(f"{name}/{LOCK}", self.lock_timeout):
            yield

    def _write_aliases(self, name: str, table: dict[str, int]) -> None:
        self.store.write_json(f"{name}/{ALIASES}", dict(sorted(table.items())))

    # --- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [n for n in self.store.children("") if NAME_RE.match(n) and (self._numbers(n) or self.store.exists(f"{n}/{ALIASES}"))]

    def _prefix_numbers(self, name: str) -> list[int]:
        return sorted(int(m.group(1)) for e in self.store.children(name) if (m := VERSION_DIR_RE.match(e)))

    def _numbers(self, name: str) -> list[int]:
        """Published versions: those whose manifest exists (one listing of the name's prefix)."""
        self.store.fs.invalidate_cache()
        found = self.store.fs.glob(self.store.key(f"{name}/v*/{MANIFEST}"))
        return sorted(int(m.group(1)) for p in found if (m := VERSION_DIR_RE.match(p.rstrip("/").split("/")[-2])))

    def _load(self, name: str, number: int) -> Version:
        manifest = self.store.read_json(f"{name}/v{number}/{MANIFEST}")
        if not isinstance(manifest, dict):
            raise RegistryIntegrityError(f"{self.root}/{name}/v{number}/{MANIFEST} is missing, so {name}@v{number} "
                                         "cannot be trusted", [MANIFEST])
        return Version(name, number, self._cache_path(manifest), manifest)

    def aliases(self, name: str) -> dict[str, int]:
        table = self.store.read_json(f"{name}/{ALIASES}")
        if table is None:
            return {}
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise RegistryIntegrityError(f'{self.root}/{name}/{ALIASES} is not {{"alias": version-number}}; fix or delete it',
                                         [ALIASES])
        return table

    def _cache_path(self, manifest: Mapping[str, Any]) -> Path:
        digest = str(manifest.get("content_digest") or "")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise RegistryIntegrityError(f"{self.root}: a manifest has no valid content_digest; the version is corrupt",
                                         [MANIFEST])
        return self.cache / digest

    def fetch(self, version: Version) -> Version:
        """Make the version's local copy exist (download + per-file sha256 check, or the cached copy)."""
        files = version.files
        if not files and not isinstance(version.manifest.get("files"), dict):
            raise RegistryIntegrityError(f"{self.root}/{version.name}/v{version.number}/{MANIFEST} has no `files` "
                                         "table; the version is corrupt", [MANIFEST])
        self.store.download_tree(f"{version.name}/v{version.number}", files, version.path,
                                 marker=(MANIFEST, dumps(version.manifest)))
        return version

    def open(self, ref: str, verify: bool = True) -> Version:
        version = self.fetch(self.resolve(ref))
        if verify:
            self.verify(version)
        return version

    def verify(self, version: Version) -> None:
        """The cached copy against the manifest (as the local registry checks its folders)."""
        self.fetch(version)
        super().verify(version)
