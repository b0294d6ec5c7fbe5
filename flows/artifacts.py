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

from components.evaluation.gates import describe_gate
from flows.summary import arm_rows


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


class RunProgress:
    """The run's own progress artifact, on the flow run the user started: every stage fills its share
    (training counts most), and the description says the stage, its item counts and an ETA."""

    WEIGHTS = {"train": 6.0, "index": 2.0, "eval": 2.0}

    def __init__(self, name: str, stages: list[str], every: float = 2.0):
        total = sum(self.WEIGHTS[s] for s in stages) or 1.0
        self.spans, start = {}, 0.0
        for stage in stages:
            self.spans[stage] = (start, self.WEIGHTS[stage] / total)
            start += self.WEIGHTS[stage] / total
        self.every, self.last, self.began = every, 0.0, {}
        self.id = create_progress_artifact(progress=0.0, key=f"progress-{name}",
                                           description=f"{name}: starting ({', '.join(stages)})")
        self.name = name

    def update(self, stage: str, done: int, total: int, unit: str) -> None:
        if stage not in self.spans:
            return
        now = time.monotonic()
        began = self.began.setdefault(stage, now)
        if done < total and now - self.last < self.every:
            return
        self.last = now
        start, width = self.spans[stage]
        fraction = start + width * min(done / max(total, 1), 1.0)
        eta = (now - began) / done * (total - done) if 0 < done < total else None
        left = f", about {eta:.0f} s left in this stage" if eta is not None else ""
        update_progress_artifact(self.id, progress=round(100.0 * fraction, 1),
                                 description=f"{self.name}: {stage} {done}/{total} {unit}{left}")

    def finished(self, stage: str, how: str) -> None:
        start, width = self.spans.get(stage, (0.0, 0.0))
        update_progress_artifact(self.id, progress=round(100.0 * (start + width), 1),
                                 description=f"{self.name}: {stage} {how}")

    def done(self, line: str) -> None:
        update_progress_artifact(self.id, progress=100.0, description=f"{self.name}: {line}")


_run: dict[str, RunProgress | None] = {"current": None}  # the adapt flow's, seen by its subflows' callbacks


def start_run_progress(name: str, stages: list[str]) -> RunProgress:
    _run["current"] = RunProgress(name, stages)
    return _run["current"]


def end_run_progress() -> None:
    """Stage callbacks stop forwarding (a later flow in this process must not move a finished run's bar)."""
    _run["current"] = None


def _forward(stage: str, done: int, total: int, unit: str) -> None:
    if (run := _run["current"]) is not None:
        run.update(stage, done, total, unit)


class Progress(_Throttled):
    """Training callback: progress(step, total, metrics)."""

    def __call__(self, step: int, total: int, metrics: dict | None = None) -> None:
        self._update(step / max(total, 1))
        _forward("train", step, total, "steps")


class StageProgress(_Throttled):
    """Indexing callback: progress(stage, done, total); the embedding part drives the run's progress."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._update(done / max(total, 1))
        if stage == "embed":
            _forward("index", done, total, "chunks embedded")


class EvalProgress(_Throttled):
    """Evaluation callback: progress(done, total) over all arms' items."""

    def __call__(self, done: int, total: int) -> None:
        self._update(done / max(total, 1))
        _forward("eval", done, total, "answers")


def _loss_image(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"\n\n## Loss curve\n\n![loss curve](data:image/png;base64,{data})\n"


def table_title(report: dict) -> str:
    """What the arm table compares: a knowledge-only run has no adapter arms."""
    arms = set(report["arms"])
    if {"adapter", "base+retrieval"} <= arms:
        return "2x2 evaluation (adapter x retrieval)"
    if "base+retrieval" in arms:
        return "retrieval vs the base model alone"
    return "adapter vs the base model alone"


def gate_metric(spec, report: dict) -> str | None:
    """The first gated metric the arms report (what decides promotion), else None."""
    gates = spec.evaluation.gates if spec.evaluation else {}
    present = {k for m in report["arms"].values() for k in m}
    return next((m for m in gates if m in present), None)


def winner_line(report: dict, metric: str) -> str:
    arms = report["arms"]
    ranked = sorted(arms, key=lambda a: arms[a].get(metric, float("-inf")), reverse=True)
    best = ranked[0]
    margin = f" by {arms[best].get(metric, 0) - arms[ranked[1]].get(metric, 0):+.3f} over {ranked[1]}" if len(ranked) > 1 else ""
    return f"**Winner on {metric} (the gated metric): {best}**{margin}."


def probe_lines(evidence: dict | None) -> list[str]:
    """`goal: auto`'s measured evidence (the manifest's `route_probe`) as a table under the route's reasons."""
    if not evidence:
        return []
    strict, limits = evidence["strict_metric"], evidence.get("thresholds", {})
    rows = [f"| {arm} | {m[strict]:.3f} | {m['contains_answer']:.3f} |" for arm, m in evidence["arms"].items()]
    return ["", f"Probe: the base model on {evidence['items']} evaluation items (index when the documents add "
            f">= {limits.get('margin')} contains-answer; adapter when {strict} with the best context is "
            f"< {limits.get('format_ok')}):", "", f"| probe arm | {strict} | contains-answer |", "|---|---:|---:|", *rows]


def publish_run_summary(spec, decision, version, gates, report, stages) -> None:
    create_table_artifact(arm_rows(report), key=f"eval-{spec.name}",
                          description=f"{table_title(report)} of {version.ref}")
    gate_lines = [f"- {describe_gate(r)}" for r in gates.results]
    stage_lines = [f"- {s.stage}: {'cached' if s.cached else 'ran'} (`{s.key[:12]}`)" for s in stages]
    status = "new version" if version.created else "identical to an existing version: nothing new registered"
    eval_md = (version.path / "eval" / "report.md").read_text()
    if metric := gate_metric(spec, report):  # report.md ranks by its headline metric; promotion uses the gate's
        eval_md = "\n".join(winner_line(report, metric) if line.startswith("**Winner on") else line
                            for line in eval_md.splitlines())
    md = "\n".join([
        f"# {version.ref}", "", f"Registry: **{version.ref}** ({status}).", "",
        f"## Route: {decision.label}", *[f"- {r}" for r in decision.reasons],
        *probe_lines(version.manifest.get("route_probe")), "",
        f"## Gates: {'passed' if gates.passed else 'FAILED — no alias moved'}", *(gate_lines or ["- none declared"]), "",
        "## Stages", *stage_lines, "", eval_md,
    ])
    md += _loss_image(version.path / "eval" / "loss.png")
    create_markdown_artifact(md, key=f"run-{spec.name}", description=f"route, registry version and evaluation of {spec.name}")
