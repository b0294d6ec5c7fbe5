"""The stage seam: `run_stage` reuses or computes one stage's output under its content key, and returns it typed.

A stage (probe, train, reader, index, eval) is a folder in the stage store (components.store.stages), keyed by the
hash of its resolved inputs (flows.keys). The flows pass the typed results below between stages; their
readers (`record()`, `report()`) are the one place that knows the file names inside a stage's folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.store.stages import DONE
from flows.keys import store


@dataclass(frozen=True)
class StageResult:
    """A finished stage: its folder in the store under `key`; `cached` when this run reused it."""

    stage: str
    key: str
    path: Path
    cached: bool

    def info(self) -> dict:
        """The stage's marker: what its commit recorded besides the files (timings, index facts)."""
        marker = self.path / DONE
        return json.loads(marker.read_text()) if marker.exists() else {}


@dataclass(frozen=True)
class Trained(StageResult):
    """The train stage, or the reader stage (a knowledge spec's reading adapter): a peft folder and its record."""

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    def record(self) -> dict:
        """The training record (components.training.recipe.TrainRecord as a dict; a registered reader's is {"from": ref})."""
        return json.loads((self.path / "train_record.json").read_text())


@dataclass(frozen=True)
class Indexed(StageResult):
    """The index stage: a FAISS index and its docstore (vectorstore)."""

    @property
    def index(self) -> Path:
        return self.path / "index"

    def record(self) -> dict:
        """What the build reported: sizes, the index type chosen, timings."""
        return self.info().get("index", {})


@dataclass(frozen=True)
class Evaluated(StageResult):
    """The eval stage: report.json, report.md and loss.png in eval/."""

    @property
    def folder(self) -> Path:
        return self.path / "eval"

    def report(self) -> dict:
        return json.loads((self.folder / "report.json").read_text())

    def record(self) -> dict:
        """How the evaluation went, not what it measured: per-arm wall times."""
        return self.info().get("timings", {})


@dataclass(frozen=True)
class Probed(StageResult):
    """The probe stage: the base model measured without context, with retrieval and with gold context."""

    def report(self) -> dict:
        return json.loads((self.path / "probe.json").read_text())


RESULTS: dict[str, type[StageResult]] = {
    "probe": Probed, "train": Trained, "reader": Trained, "index": Indexed, "eval": Evaluated,
}


def done(stage: str, key: str) -> StageResult | None:
    """The stage's output under `key` if the store has it (downloading a shared one), else None."""
    found = store().done(stage, key)
    return RESULTS[stage](stage, key, found, True) if found else None


def run_stage(stage: str, key: str, compute: Callable[..., Path], *args, **kwargs) -> StageResult:
    """The stage's output under `key`: reused when the store has it, else `compute(*args, **kwargs)`, which
    writes the stage's work folder and commits it (returning the committed folder). The key's lock makes two
    runs that miss at once compute it once: the second waits, then reuses."""
    if found := done(stage, key):
        print(f"[cached] {stage} ({key[:12]}): inputs unchanged, reusing {found.path}")
        return found
    with store().lock(stage, key):
        if found := done(stage, key):  # another run finished it while we waited
            return found
        return RESULTS[stage](stage, key, compute(*args, **kwargs), False)
