"""What the Prefect UI shows: progress while training and embedding, the evaluation table,
the route decision with the registry version, and the loss curve."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from components.evaluate import METRIC_ORDER
from components.gates import describe_gate


class _Throttled:
    """A progress artifact updated at most every `every` seconds (the API is not a log)."""

    def __init__(self, title: str, key: str, every: float = 2.0):
        self.id = create_progress_artifact(progress=0.0, key=key, description=title)
        self.every, self.last, self.title = every, 0.0, title

    def _update(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self.last >= self.every:
            self.last = now
            update_progress_artifact(self.id, progress=round(100.0 * min(fraction, 1.0), 1))


class Progress(_Throttled):
    """Training callback: progress(step, total, metrics)."""

    def __call__(self, step: int, total: int, metrics: dict | None = None) -> None:
        self._update(step / max(total, 1))


class StageProgress(_Throttled):
    """Indexing callback: progress(stage, done, total)."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._update(done / max(total, 1))


class EvalProgress(_Throttled):
    """Evaluation callback: progress(done, total) over all arms' items."""

    def __call__(self, done: int, total: int) -> None:
        self._update(done / max(total, 1))


def _loss_image(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"\n\n## Loss curve\n\n![loss curve](data:image/png;base64,{data})\n"


def arm_rows(report: dict) -> list[dict]:
    """One row per arm with the same columns in every row (the UI takes columns from the first row)."""
    keys = [k for k in METRIC_ORDER if any(k in m for m in report["arms"].values())]
    return [{"arm": arm, **{k: round(m[k], 4) if k in m else None for k in keys}} for arm, m in report["arms"].items()]


def publish_run_summary(spec, decision, version, gates, report, stages, trained) -> None:
    create_table_artifact(arm_rows(report), key=f"eval-{spec.name}", description=f"2x2 evaluation of {version.ref}")
    gate_lines = [f"- {describe_gate(r)}" for r in gates.results]
    stage_lines = [f"- {s.stage}: {'cached' if s.cached else 'ran'} (`{s.key[:12]}`)" for s in stages]
    status = "new version" if version.created else "identical to an existing version: nothing new registered"
    eval_md = (version.path / "eval" / "report.md").read_text()
    md = "\n".join([
        f"# {version.ref}", "", f"Registry: **{version.ref}** ({status}).", "",
        f"## Route: {decision.label}", *[f"- {r}" for r in decision.reasons], "",
        f"## Gates: {'passed' if gates.passed else 'FAILED — no alias moved'}", *(gate_lines or ["- none declared"]), "",
        "## Stages", *stage_lines, "", eval_md,
    ])
    md += _loss_image(version.path / "eval" / "loss.png")
    create_markdown_artifact(md, key=f"run-{spec.name}", description=f"route, registry version and evaluation of {spec.name}")
