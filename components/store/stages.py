"""Content-keyed stage outputs: an unchanged input re-runs nothing, across runs and processes.

Each stage (train, index, eval) stores its output folder under
`$ADAPTFLOW_HOME/stages/<stage>/<key>/`, where key hashes the stage's resolved inputs: its spec
section, data file hashes, upstream digests and the source of the code that computes it.
Work happens in `<key>.work/` (training checkpoints live there, so a killed run resumes) and
is fsynced, marked and renamed into place when complete (components.store.fileio), so a finished folder
is never partial.

With `ADAPTFLOW_STAGES` set to a remote fsspec URL (s3://bucket/stages), finished outputs are also
shared through it, so a second machine or worker reuses them: a commit uploads the folder under a
fresh prefix `<stage>/<key>/<upload-id>/`, then creates `<stage>/<key>/stage.json` (its file
hashes and that prefix) only if absent. The first writer of a key wins; a loser deletes its upload.
`done` downloads a remote output into the local folder, checking every file's sha256 on the way.
Work folders and locks stay local to the machine (`$ADAPTFLOW_HOME/stages`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import uuid
from pathlib import Path
from types import ModuleType

from filelock import FileLock

from components.store.fileio import (
    adaptflow_home,
    atomic_write_text,
    fsync_tree,
    json_text,
    seal_dir,
    sha256_file,
)
from components.store.objectstore import ObjectStore, is_url

DONE = "stage.json"


def digest(*parts: object) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def path_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names and file contents."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return digest([(str(p.relative_to(path)), sha256_file(p)) for p in files])


def code_version(*modules: ModuleType) -> str:
    """Hash of the source of the modules that compute a stage: a code change invalidates it."""
    return digest([inspect.getsource(m) for m in modules])[:16]


class StageStore:
    def __init__(self, root: Path | str | None = None):
        chosen = root or os.environ.get("ADAPTFLOW_STAGES")
        self.remote = ObjectStore(str(chosen)) if is_url(str(chosen)) else None
        self.root = adaptflow_home() / "stages" if self.remote or not chosen else Path(chosen)

    def done(self, stage: str, key: str) -> Path | None:
        folder = self.root / stage / key
        if (folder / DONE).exists():
            return folder
        return self._fetch(stage, key) if self.remote else None

    def _fetch(self, stage: str, key: str) -> Path | None:
        marker = self.remote.read_json(f"{stage}/{key}/{DONE}")
        if not isinstance(marker, dict):
            return None
        files, prefix = marker.pop("files"), marker.pop("prefix")
        return self.remote.download_tree(f"{stage}/{key}/{prefix}", files, self.root / stage / key,
                                         marker=(DONE, json.dumps(marker, indent=2, default=str)))

    def _share(self, stage: str, key: str, folder: Path, info: dict) -> None:
        """Upload a finished output; the marker, created last and only if absent, publishes it."""
        prefix = uuid.uuid4().hex
        files = {rel: sha for rel, sha in self.remote.upload_tree(folder, f"{stage}/{key}/{prefix}").items() if rel != DONE}
        marker = {**json.loads(json.dumps(info, default=str)), "files": files, "prefix": prefix}
        if not self.remote.create_json(f"{stage}/{key}/{DONE}", marker):
            self.remote.delete(f"{stage}/{key}/{prefix}")  # another worker published this key first

    def lock(self, stage: str, key: str) -> FileLock:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / stage / f"{key}.lock"))

    def work(self, stage: str, key: str) -> Path:
        """The in-progress folder; kept across a crash so the stage can resume."""
        folder = self.root / stage / f"{key}.work"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def commit(self, stage: str, key: str, info: dict, keep: tuple[str, ...] = ()) -> Path:
        """Move the work folder into place (only `keep` entries when given) with its marker."""
        work = self.root / stage / f"{key}.work"
        if keep:
            for entry in work.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        final = self.root / stage / key
        fsync_tree(work)
        seal_dir(work, final, DONE, {"stage": stage, "key": key, **info},
                 text=lambda data: json_text(data, default=str))
        if self.remote:
            self._share(stage, key, final, {"stage": stage, "key": key, **info})
        return final

    def pointer(self, stage: str, name: str) -> Path | None:
        """The last completed output of `stage` for a task name (the base of incremental updates)."""
        ref = self.root / stage / f"latest-{name}.txt"
        if self.remote and (raw := self.remote.read_bytes(f"{stage}/latest-{name}.txt")):
            return self.done(stage, raw.decode().strip())
        if ref.exists():
            folder = self.done(stage, ref.read_text().strip())
            return folder
        return None

    def set_pointer(self, stage: str, name: str, key: str) -> None:
        atomic_write_text(self.root / stage / f"latest-{name}.txt", key)
        if self.remote:
            self.remote.fs.pipe_file(self.remote.key(f"{stage}/latest-{name}.txt"), key.encode())
