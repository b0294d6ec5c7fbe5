"""No-op runs noted while no Prefect server was up, for the next command that has one (flows.record).

Starting a server only to record that nothing ran would cost ~10 s, so `adaptflow run` notes the run
in $ADAPTFLOW_HOME/unrecorded-runs.jsonl (no Prefect import) and the next `adaptflow run` with work to
do, or `adaptflow ui`, records it as an `adapt` flow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

UNRECORDED = "unrecorded-runs.jsonl"


def _ledger() -> Path:
    from components.store.fileio import adaptflow_home

    return adaptflow_home() / UNRECORDED


def note_unrecorded(spec_path: str, ref: str) -> None:
    """Keep a no-op run for the next command with a server (one JSON line; appends are atomic)."""
    path = _ledger()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"spec_path": str(Path(spec_path).absolute()), "ref": ref,
                       "noted_at": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)


@contextlib.contextmanager
def claim_noted() -> Iterator[list[dict]]:
    """The noted runs, claimed by a rename first (two commands never record one twice); the claim is
    dropped once recorded, and put back if recording fails."""
    path = _ledger()
    claimed = path.with_name(f"{UNRECORDED}.{os.getpid()}")
    try:
        os.replace(path, claimed)
    except FileNotFoundError:
        yield []
        return
    text = claimed.read_text(encoding="utf-8")
    try:
        yield [json.loads(line) for line in text.splitlines() if line.strip()]
    except BaseException:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
        raise
    finally:
        claimed.unlink(missing_ok=True)
