"""Content-keyed stage outputs: an unchanged input re-runs nothing, across runs and processes.

Each stage (train, index, eval) stores its output folder under
`$ADAPTFLOW_HOME/stages/<stage>/<key>/`, where key hashes the stage's resolved inputs: its spec
section, data file hashes, upstream digests and the source of the code that computes it.
Work happens in `<key>.work/` (training checkpoints live there, so a killed run resumes) and
is renamed into place when complete, so a finished folder is never partial.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from pathlib import Path
from types import ModuleType

from filelock import FileLock

from components.models import adaptflow_home, sha256_file

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
    def __init__(self, root: Path | None = None):
        env = os.environ.get("ADAPTFLOW_STAGES")
        self.root = Path(root) if root else Path(env) if env else adaptflow_home() / "stages"

    def done(self, stage: str, key: str) -> Path | None:
        folder = self.root / stage / key
        return folder if (folder / DONE).exists() else None

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
        (work / DONE).write_text(json.dumps({"stage": stage, "key": key, **info}, indent=2, default=str))
        final = self.root / stage / key
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return final

    def pointer(self, stage: str, name: str) -> Path | None:
        """The last completed output of `stage` for a task name (the base of incremental updates)."""
        ref = self.root / stage / f"latest-{name}.txt"
        if ref.exists():
            folder = self.done(stage, ref.read_text().strip())
            return folder
        return None

    def set_pointer(self, stage: str, name: str, key: str) -> None:
        ref = self.root / stage / f"latest-{name}.txt"
        tmp = ref.with_suffix(".tmp")
        tmp.write_text(key)
        os.replace(tmp, ref)
