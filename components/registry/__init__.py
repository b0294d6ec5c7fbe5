"""The registry: immutable, content-addressed versions of a task's artifacts, plus movable aliases.

Helpers live beside it: `registry_files` (errors, the manifest's JSON, the content digest),
`registry_lineage` (`manifest_base`: library versions, git commit, spec hash), `registry_diff`.
Hashing, fsync and the temp-folder-then-rename recipe are components.store.fileio's.

```
<root>/<name>/v<N>/manifest.json   the manifest (see `publish`) + "files": {relpath: sha256}
<root>/<name>/v<N>/...             whatever the staging folder held (adapter/, index/, eval/)
<root>/<name>/aliases.json         {"latest": 4, "production": 3}
<root>/<name>/.lock                serialises publishes and alias moves across processes
<root>/<name>/.tmp-<pid>-<random>-<host>/   a publish in progress; never listed, removed if its owner died
```

A version appears by one `rename` of a complete, fsynced temp folder, so readers see all of it
or none of it; numbers are assigned under the lock, so concurrent publishers get distinct ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from components.registry.core import (
    ALIASES,
    ENV_ROOT,
    LOCK,
    NAME_RE,
    STALE_TMP_S,
    TMP_PREFIX,
    VERSION_DIR_RE,
    RegistryBase,
    Version,
    _chosen_root,
    parse_ref,
)
from components.registry.diff import diff_manifests
from components.registry.files import (
    DIGEST_EXCLUDED,
    MANIFEST,
    RegistryError,
    RegistryIntegrityError,
    content_digest,
    copy_files,
    dumps,
    read_json,
    write_json_durable,
)
from components.registry.lineage import (
    gate_status,
    gate_summary,
    library_versions,
    lineage,
    manifest_base,
    spec_hash,
)
from components.store.fileio import atomic_write_text, rename_into_place, sha256_file, stage_dir
from components.store.objectstore import is_url

__all__ = [
    "DIGEST_EXCLUDED", "ENV_ROOT", "Registry", "RegistryError", "RegistryIntegrityError", "Version",
    "content_digest", "diff_manifests", "gate_status", "gate_summary", "library_versions", "lineage",
    "manifest_base", "parse_ref", "sha256_file", "spec_hash",
]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Registry(RegistryBase):
    """A registry rooted at `root`, else `$ADAPTFLOW_REGISTRY`, else `./registry`.

    A remote fsspec URL (s3://bucket/registry, gs://...) gives a `registry_remote.ObjectRegistry`:
    the same interface (both are `registry_core.RegistryBase`), with versions cached locally by
    content digest when opened.
    """

    def __new__(cls, root: Path | str | None = None, **kwargs: Any) -> RegistryBase:
        if cls is Registry and is_url(str(_chosen_root(root))):
            from components.registry.remote import ObjectRegistry  # fsspec's half, loaded only for a URL

            return ObjectRegistry(root, **kwargs)  # not a Registry: Python leaves its __init__ to this call
        return super().__new__(cls)

    def __init__(self, root: Path | str | None = None, *, lock_timeout: float = 600.0):
        chosen = _chosen_root(root)
        if str(chosen).startswith("file://"):
            chosen = str(chosen)[len("file://"):]
        self.root = Path(chosen).expanduser().absolute()
        self.lock_timeout = lock_timeout

    # --- publish ---------------------------------------------------------------------------

    def publish(
        self, name: str, staging: Path, manifest: Mapping[str, Any], *, aliases: Sequence[str] = ("latest",)
    ) -> Version:
        """Publish `staging` as the next version of `name`, or return the existing identical one.

        `manifest` is the caller's record (spec, route, base_model, metrics, gates, ...); the
        registry adds version, created_at, content_digest and files. Volatile values go under
        `manifest["volatile"]` and volatile files are named by `manifest["volatile_files"]`
        globs; neither makes a new version (see `files.content_digest`).

        Aliases move only as far as the gates allow: a failed gate or an `eval_error` moves
        none; a manifest without `gates` moves only `latest`; passed gates move all of `aliases`.
        """
        data, digest = self._prepare(name, staging, manifest, aliases)
        if found := self._find_digest(name, digest):
            return found  # identical content: write nothing, move nothing
        staging = Path(staging)
        files = data["files"]
        name_dir = self.root / name
        name_dir.mkdir(parents=True, exist_ok=True)
        tmp, facts = stage_dir(name_dir, lambda tmp: copy_files(staging, tmp),  # the slow part, outside the lock
                               prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=f"-{socket.gethostname()}")
        try:
            copied = {rel: f["sha256"] for rel, f in facts.items()}  # what landed, hashed after fsync
            if copied != files:
                changed = sorted(set(copied.items()) ^ set(files.items()))
                raise RegistryError(
                    f"{staging} changed while it was being published ({', '.join(sorted({c[0] for c in changed}))}); "
                    "let the run finish writing, then publish again"
                )
            with self._lock(name):
                self._clean_stale_temps(name_dir)
                if found := self._find_digest(name, digest):  # a concurrent publisher won
                    shutil.rmtree(tmp, ignore_errors=True)
                    return found
                return self._commit(name, tmp, data, digest, aliases)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _commit(self, name: str, tmp: Path, data: dict[str, Any], digest: str, aliases: Sequence[str]) -> Version:
        """Under the lock: number, manifest, rename, aliases. The rename is the moment of publication."""
        number = self._next_number(name)
        final = self.root / name / f"v{number}"
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        full = {"version": number, "name": name, "created_at": created_at, "content_digest": digest, **data}
        full["files"] = full.pop("files")  # keep the long list at the end of the file
        write_json_durable(tmp / MANIFEST, full)
        if final.exists():
            raise RegistryError(f"{final} already exists although it is not the highest version; remove the stray folder")
        rename_into_place(tmp, final, existing="error")
        moved = self._move_aliases_locked(name, number, aliases, full)
        return Version(name, number, final, full, created=True, moved_aliases=moved)

    def _write_aliases(self, name: str, table: dict[str, int]) -> None:
        atomic_write_text(self.root / name / ALIASES, dumps(dict(sorted(table.items()))))

    def _clean_stale_temps(self, name_dir: Path) -> None:
        """Remove temp folders left by publishers that died (same host, pid gone) or are a day old."""
        host = socket.gethostname()
        for entry in name_dir.glob(f"{TMP_PREFIX}*"):
            try:
                pid_text, _, owner_host = entry.name[len(TMP_PREFIX):].split("-", 2)
                dead = owner_host == host and not _pid_alive(int(pid_text))
            except ValueError:
                dead = True  # not a name we write; nothing else should live here
            if dead or time.time() - entry.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        path = self.root / name / LOCK
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(path, timeout=self.lock_timeout):
                yield
        except Timeout as exc:
            raise RegistryError(
                f"could not lock {path} within {self.lock_timeout:.0f}s; another publish or alias move "
                "is running there; wait for it or raise lock_timeout"
            ) from exc

    # --- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            d.name for d in self.root.iterdir()
            if d.is_dir() and NAME_RE.match(d.name) and (self._numbers(d.name) or (d / ALIASES).exists())
        )

    def _numbers(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for d in folder.iterdir() if d.is_dir() and (m := VERSION_DIR_RE.match(d.name)))

    def _load(self, name: str, number: int) -> Version:
        path = self.root / name / f"v{number}"
        try:
            manifest = read_json(path / MANIFEST)
        except FileNotFoundError as exc:
            raise RegistryIntegrityError(
                f"{path / MANIFEST} is missing, so {name}@v{number} cannot be trusted; remove {path}", [MANIFEST]
            ) from exc
        return Version(name, number, path, manifest)

    def aliases(self, name: str) -> dict[str, int]:
        path = self.root / name / ALIASES
        if not path.exists():
            return {}
        table = read_json(path)
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise RegistryIntegrityError(f'{path} is not {{"alias": version-number}}; fix or delete it', [ALIASES])
        return table
