"""The registry: immutable, content-addressed versions of a task's artifacts, plus movable aliases.

Helpers live beside it: `registry_files` (errors, the manifest's JSON, the content digest),
`registry_lineage` (`manifest_base`: library versions, git commit, spec hash), `registry_diff`.
Hashing, fsync and the temp-folder-then-rename recipe are components.fileio's.

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

import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from components.fileio import atomic_write_text, rename_into_place, sha256_file, stage_dir, verify_dir
from components.objectstore import is_url, url_from_path
from components.registry_diff import diff_manifests
from components.registry_files import (
    ASSIGNED_KEYS,
    DIGEST_EXCLUDED,
    MANIFEST,
    RegistryError,
    RegistryIntegrityError,
    content_digest,
    copy_files,
    dumps,
    hash_tree,
    read_json,
    to_json_data,
    walk_files,
    write_json_durable,
)
from components.registry_lineage import (
    GateStatus,
    gate_status,
    gate_summary,
    library_versions,
    lineage,
    manifest_base,
    spec_hash,
)

__all__ = [
    "DIGEST_EXCLUDED", "ENV_ROOT", "Registry", "RegistryError", "RegistryIntegrityError", "Version",
    "content_digest", "diff_manifests", "gate_status", "gate_summary", "library_versions", "lineage",
    "manifest_base", "parse_ref", "sha256_file", "spec_hash",
]
log = logging.getLogger(__name__)

ENV_ROOT = "ADAPTFLOW_REGISTRY"
ALIASES = "aliases.json"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 24 * 3600  # a temp folder this old is abandoned even if its pid was reused
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
VERSION_RE = re.compile(r"^v?(\d+)$")
VERSION_DIR_RE = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Version:
    """One published version. `created` is False when publish found identical content already there."""

    name: str
    number: int
    path: Path
    manifest: dict[str, Any]
    created: bool = False
    moved_aliases: tuple[str, ...] = ()  # set by publish: the aliases it moved to this version

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.number}"

    @property
    def files(self) -> dict[str, str]:
        return dict(self.manifest.get("files") or {})

    @property
    def gate_status(self) -> GateStatus:
        return gate_status(self.manifest)


def parse_ref(ref: str) -> tuple[str, str]:
    """'name' -> (name, 'latest'); 'name@v3' / 'name@3' / 'name@production' -> (name, selector)."""
    name, sep, selector = ref.strip().partition("@")
    if sep and not selector:
        raise RegistryError(f"ref '{ref}' ends with '@'; write NAME, NAME@vN or NAME@ALIAS")
    if not NAME_RE.match(name):
        raise RegistryError(f"ref '{ref}': name '{name}' is not [a-z0-9][a-z0-9-]*; write NAME, NAME@vN or NAME@ALIAS")
    return name, selector or "latest"


def _check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias) or VERSION_RE.match(alias):
        raise RegistryError(
            f"alias '{alias}' is not a valid alias name; use [a-z][a-z0-9_-]* and not the form vN "
            "(that reads as a version number), e.g. 'production' or 'staging'"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _chosen_root(root: Path | str | None) -> Path | str:
    return url_from_path(root) if root is not None else os.environ.get(ENV_ROOT) or "registry"


class Registry:
    """A registry rooted at `root`, else `$ADAPTFLOW_REGISTRY`, else `./registry`.

    A remote fsspec URL (s3://bucket/registry, gs://...) gives a `registry_remote.ObjectRegistry`:
    the same interface, with versions cached locally by content digest when opened.
    """

    def __new__(cls, root: Path | str | None = None, **_: Any) -> Registry:
        if cls is Registry and is_url(str(_chosen_root(root))):
            from components.registry_remote import ObjectRegistry  # the object-store half imports this module

            return super().__new__(ObjectRegistry)
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

    def _prepare(
        self, name: str, staging: Path, manifest: Mapping[str, Any], aliases: Sequence[str]
    ) -> tuple[dict[str, Any], str]:
        """Check the inputs; return the manifest data (with `files`) and its content digest."""
        if not NAME_RE.match(name):
            raise RegistryError(f"registry name '{name}' is not [a-z0-9][a-z0-9-]*; use the spec's `name`")
        for alias in aliases:
            _check_alias(alias)
        staging = Path(staging)
        if not staging.is_dir():
            raise RegistryError(f"staging folder {staging} does not exist or is not a folder; pass the run's output folder")
        data = self._caller_manifest(name, manifest)
        files = hash_tree(staging)
        if MANIFEST in files:
            raise RegistryError(f"{staging / MANIFEST} exists; the registry writes manifest.json itself, so move that file")
        data["files"] = files
        digest = content_digest(data)
        return data, digest

    def _caller_manifest(self, name: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        clash = [k for k in ASSIGNED_KEYS if k in manifest]
        if clash:
            raise RegistryError(f"manifest sets {', '.join(clash)}, which the registry assigns at publish; remove them")
        if "name" in manifest and manifest["name"] != name:
            raise RegistryError(f"manifest name '{manifest['name']}' differs from the publish name '{name}'; make them agree")
        data = to_json_data(manifest)
        patterns = data.get("volatile_files", [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise RegistryError('manifest.volatile_files must be a list of glob strings, e.g. ["eval/report.md"]')
        return {"name": name, **data}

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

    def _move_aliases_locked(self, name: str, number: int, aliases: Sequence[str], manifest: dict) -> tuple[str, ...]:
        status = gate_status(manifest)
        allowed = [a for a in aliases if status == "passed" or (status == "unknown" and a == "latest")]
        skipped = [a for a in aliases if a not in allowed]
        if skipped:
            log.info("%s@v%d: gates %s, not moving %s", name, number, status, ", ".join(skipped))
        if allowed:
            table = self.aliases(name)
            table.update({a: number for a in allowed})
            self._write_aliases(name, table)
        return tuple(allowed)

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

    def _next_number(self, name: str) -> int:
        numbers = self._numbers(name)
        return numbers[-1] + 1 if numbers else 1

    def _load(self, name: str, number: int) -> Version:
        path = self.root / name / f"v{number}"
        try:
            manifest = read_json(path / MANIFEST)
        except FileNotFoundError as exc:
            raise RegistryIntegrityError(
                f"{path / MANIFEST} is missing, so {name}@v{number} cannot be trusted; remove {path}", [MANIFEST]
            ) from exc
        return Version(name, number, path, manifest)

    def _find_digest(self, name: str, digest: str) -> Version | None:
        for number in self._numbers(name):
            try:
                version = self._load(name, number)
            except RegistryIntegrityError:
                continue  # a damaged version cannot be the identical one
            if version.manifest.get("content_digest") == digest:
                return version
        return None

    def versions(self, name: str) -> list[Version]:
        self._require_name(name)
        return [self._load(name, n) for n in self._numbers(name)]

    def aliases(self, name: str) -> dict[str, int]:
        path = self.root / name / ALIASES
        if not path.exists():
            return {}
        table = read_json(path)
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise RegistryIntegrityError(f'{path} is not {{"alias": version-number}}; fix or delete it', [ALIASES])
        return table

    def _require_name(self, name: str) -> None:
        if name not in self.names():
            known = ", ".join(self.names()) or "none yet"
            raise RegistryError(f"no task named '{name}' in registry {self.root} (known: {known}); check the name or --root")

    def resolve(self, ref: str) -> Version:
        """`name` (= name@latest), `name@vN`, `name@N` or `name@alias` -> that version (not verified)."""
        name, selector = parse_ref(ref)
        self._require_name(name)
        numbers = self._numbers(name)
        if m := VERSION_RE.match(selector):
            number = int(m.group(1))
            if number not in numbers:
                have = ", ".join(f"v{n}" for n in numbers) or "none"
                raise RegistryError(f"{name} has no version v{number} (versions: {have})")
            return self._load(name, number)
        table = self.aliases(name)
        if selector not in table:
            have = ", ".join(f"{a} -> v{n}" for a, n in sorted(table.items())) or "none"
            hint = f"; use {name}@v{numbers[-1]}" if numbers else ""
            raise RegistryError(f"{name} has no alias '{selector}' (aliases: {have}){hint}")
        if table[selector] not in numbers:
            raise RegistryIntegrityError(
                f"{self.root}/{name}/{ALIASES}: '{selector}' points at v{table[selector]}, which does not exist; "
                f"move it with `adaptflow registry promote {name}@vN {selector}`", [ALIASES]
            )
        return self._load(name, table[selector])

    def open(self, ref: str, verify: bool = True) -> Version:
        version = self.resolve(ref)
        if verify:
            self.verify(version)
        return version

    def verify(self, version: Version) -> None:
        """Check every file against the manifest, and the manifest against its own digest."""
        expected = version.manifest.get("files")
        if not isinstance(expected, dict):
            raise RegistryIntegrityError(f"{version.path / MANIFEST} has no `files` table; the version is corrupt", [MANIFEST])
        found = verify_dir(version.path, expected)
        missing = sorted(rel for rel, problem in found.items() if problem == "missing")
        modified = sorted(rel for rel, problem in found.items() if problem != "missing")
        extra = sorted(set(walk_files(version.path)) - {MANIFEST} - set(expected))
        problems = [f"{kind} {rel}" for kind, rels in (("modified", modified), ("missing", missing), ("extra", extra))
                    for rel in rels]
        if content_digest(version.manifest) != version.manifest.get("content_digest"):
            problems.append(f"modified {MANIFEST} (its content no longer matches content_digest)")
        if problems:
            raise RegistryIntegrityError(
                f"{version.ref} at {version.path} does not match its manifest: {'; '.join(problems)}. "
                "Published versions are never edited; publish the run's outputs again to get a good version",
                modified + missing + extra,
            )

    # --- aliases and comparison ------------------------------------------------------------

    def set_alias(self, name: str, alias: str, number: int) -> None:
        """Point `alias` at v`number`, whatever its gates say (see `promote` for the checked move)."""
        _check_alias(alias)
        self._require_name(name)
        with self._lock(name):
            if number not in self._numbers(name):
                have = ", ".join(f"v{n}" for n in self._numbers(name)) or "none"
                raise RegistryError(f"{name} has no version v{number} (versions: {have}); cannot point '{alias}' at it")
            table = self.aliases(name)
            table[alias] = number
            self._write_aliases(name, table)

    def promote(self, ref: str, alias: str, *, force: bool = False) -> Version:
        """Move `alias` to the version `ref` names; refuses a version whose gates failed unless `force`."""
        version = self.resolve(ref)
        if version.gate_status == "failed" and not force:
            raise RegistryError(
                f"{version.ref} failed its gates ({gate_summary(version.manifest)}); not moving '{alias}'. "
                "Publish a version that passes, or pass --force to promote it anyway"
            )
        self.set_alias(version.name, alias, version.number)
        return version

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        a, b = self.resolve(ref_a), self.resolve(ref_b)
        return {"a": a.ref, "b": b.ref, **diff_manifests(a.manifest, b.manifest)}

