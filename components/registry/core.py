"""What every registry shares, wherever its versions live: the version record, refs, the manifest checks,
resolving refs, verifying a version's files, alias moves and diffs (components.registry has the
local-folder registry, components.registry.remote the object-store one; both build on `RegistryBase`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.registry.diff import diff_manifests
from components.registry.files import (
    ASSIGNED_KEYS,
    MANIFEST,
    RegistryError,
    RegistryIntegrityError,
    content_digest,
    hash_tree,
    to_json_data,
    walk_files,
)
from components.registry.lineage import GateStatus, gate_status, gate_summary
from components.store.fileio import verify_dir
from components.store.objectstore import url_from_path

log = logging.getLogger("components.registry")

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


def _chosen_root(root: Path | str | None) -> Path | str:
    return url_from_path(root) if root is not None else os.environ.get(ENV_ROOT) or "registry"


class RegistryBase:
    """The storage-independent half of a registry. A subclass says where versions live: `names`, `_numbers`,
    `_load`, `aliases`, `_write_aliases` and `_lock`, and how `publish` makes a version appear."""

    root: Any
    lock_timeout: float

    def names(self) -> list[str]:
        raise NotImplementedError

    def _numbers(self, name: str) -> list[int]:
        raise NotImplementedError

    def _load(self, name: str, number: int) -> Version:
        raise NotImplementedError

    def aliases(self, name: str) -> dict[str, int]:
        raise NotImplementedError

    def _write_aliases(self, name: str, table: dict[str, int]) -> None:
        raise NotImplementedError

    def _lock(self, name: str) -> AbstractContextManager[None]:
        raise NotImplementedError

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

    def _next_number(self, name: str) -> int:
        numbers = self._numbers(name)
        return numbers[-1] + 1 if numbers else 1

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

