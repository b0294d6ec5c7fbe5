"""The systems a server has loaded: by version ref, least recently used first out past `--max-adapters`.

Aliases are re-resolved on every request (a promotion shows at once). A loaded version is re-verified
when its files change on disk: every request compares a stat stamp (size, mtime, inode) of the version's
files with the one taken at load, and a changed stamp reloads the version, which checks every hash
against the manifest (a tampered file then answers 500 `integrity_error`). Cost: one stat per file per
request (~20 files, tens of microseconds).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from components.registry import Registry


def stat_stamp(folder: Path) -> tuple:
    stamp = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            stamp.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamp)


@dataclass(eq=False)
class Loaded:
    system: object
    stamp: tuple
    busy: int = 0


class Systems:
    def __init__(self, registry: Registry, max_adapters: int | None = None,
                 on_event: Callable[[str, str], None] | None = None, backend=None):
        self.registry, self.max_adapters = registry, max_adapters
        self.backend = backend  # flows.vllm_backend.VllmBackend: attaches each loaded system, detaches it on drop
        self.on_event = on_event or (lambda kind, ref: None)  # ("load" | "evict" | "reload", ref)
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def using(self, ref: str) -> Iterator[object]:
        """The loaded system for `ref`, kept from eviction while the caller uses it."""
        entry = self.acquire(ref)
        try:
            yield entry.system
        finally:
            self.release(entry)

    def acquire(self, ref: str) -> Loaded:
        """Load (or find) `ref` and mark it busy until `release` (a stream holds it until its last chunk)."""
        return self._get(ref)

    def release(self, entry: Loaded) -> None:
        with self._lock:
            entry.busy -= 1

    def _get(self, ref: str) -> Loaded:
        from adaptflow.system import load_system

        version = self.registry.resolve(ref)
        stamp = stat_stamp(version.path)
        with self._lock:
            entry = self._loaded.get(version.ref)
            if entry is not None and entry.stamp == stamp:
                self._loaded.move_to_end(version.ref)
                entry.busy += 1
                return entry
            loading = self._loading.setdefault(version.ref, threading.Lock())
        with loading:  # one load per version; requests for loaded systems do not wait for it
            with self._lock:
                entry = self._loaded.get(version.ref)
            if entry is None or entry.stamp != stamp:
                if entry is not None:
                    self._drop(version.ref, "reload")
                system = load_system(version.ref, self.registry)  # verifies every hash
                if self.backend is not None:
                    self.backend.attach(system, version.path)
                entry = Loaded(system, stat_stamp(version.path))  # (a remote registry's cache exists only now)
                self.on_event("load", version.ref)
            with self._lock:
                self._loaded[version.ref] = entry
                self._loaded.move_to_end(version.ref)
                entry.busy += 1
            self._evict()
            return entry

    def _drop(self, ref: str, why: str) -> None:
        with self._lock:
            entry = self._loaded.pop(ref, None)
        if entry is not None:
            if self.backend is not None:
                self.backend.detach(entry.system)
            entry.system.unload()
            self.on_event(why, ref)

    def _evict(self) -> None:
        """Unload the least recently used idle systems with adapters until at most max_adapters remain."""
        if self.max_adapters is None:
            return
        with self._lock:
            with_adapters = [ref for ref, e in self._loaded.items() if e.system.method is not None]
            excess = len(with_adapters) - self.max_adapters
            victims = [ref for ref in with_adapters if self._loaded[ref].busy == 0][:max(0, excess)]
        for ref in victims:
            self._drop(ref, "evict")

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def model_ids(self) -> list[tuple[str, str]]:
        """(id, created_at) for every NAME@vN and NAME@alias."""
        ids = []
        for name in self.registry.names():
            versions = {v.number: v for v in self.registry.versions(name)}
            ids += [(f"{name}@v{n}", v.manifest.get("created_at", "")) for n, v in versions.items()]
            ids += [(f"{name}@{alias}", versions[n].manifest.get("created_at", "") if n in versions else "")
                    for alias, n in sorted(self.registry.aliases(name).items())]
        return ids
