"""The frozen evaluation corpora (specs/data/unseen/): their bytes are the ones hashed in FROZEN before any tuning.

A corpus that changes after the work it judges stops judging it. This test fails on any edit, addition or removal
under specs/data/unseen/ that FROZEN does not record, and checks each corpus is the size the evaluation needs
(30 or more answerable questions with gold doc_ids, some given as file stems; 8 or more unanswerable ones).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.evaluation.metrics import is_abstention

UNSEEN = Path(__file__).resolve().parents[1] / "specs" / "data" / "unseen"
KEPT_OUT = {"FROZEN", "README.md"}


def frozen() -> dict[str, str]:
    """{path relative to specs/data/unseen: sha256} as `sha256sum` writes it."""
    out = {}
    for line in (UNSEEN / "FROZEN").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, path = line.split(maxsplit=1)
            out[path.strip()] = digest
    return out


def test_every_corpus_file_has_its_frozen_hash():
    recorded = frozen()
    present = {str(p.relative_to(UNSEEN)) for p in UNSEEN.rglob("*") if p.is_file() and p.name not in KEPT_OUT}
    assert present == set(recorded), f"added: {sorted(present - set(recorded))}, removed: {sorted(set(recorded) - present)}"
    changed = [p for p, digest in recorded.items() if hashlib.sha256((UNSEEN / p).read_bytes()).hexdigest() != digest]
    assert not changed, f"changed after freezing: {changed}"


def test_three_or_more_corpora_each_big_enough():
    names = sorted(p.parent.name for p in UNSEEN.glob("*/qa.jsonl"))
    assert len(names) >= 3
    for name in names:
        rows = [json.loads(line) for line in (UNSEEN / name / "qa.jsonl").read_text().splitlines() if line.strip()]
        unanswerable = [r for r in rows if is_abstention(r["answer"] if isinstance(r["answer"], str) else "")]
        answerable = [r for r in rows if r not in unanswerable]
        assert len(answerable) >= 30 and all(r.get("doc_ids") for r in answerable), name
        assert len(unanswerable) >= 8 and not any(r.get("doc_ids") for r in unanswerable), name
        stems = [d for r in answerable for d in r["doc_ids"] if not d.endswith(".md")]
        assert stems, f"{name}: some gold doc_ids are given as file stems"
        assert (Path(__file__).resolve().parents[1] / "specs" / "unseen" / f"{name}.yaml").exists()
