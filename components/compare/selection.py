"""Results, Pareto fronts and the choice of one variant: typed rows in, the report's plain data out.

`build_report` is the one place a report is made; its rows are `VariantRow`s until they are written
as report.json, so an unchanged comparison yields an identical report (and no new registry version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import get_args

from components.compare.variants import CompareError
from components.spec import SelectRule

SELECT_RULES: tuple[str, ...] = get_args(SelectRule)
SCORE_METRICS = ("accuracy", "answer_f1", "contains_answer", "exact_match")  # the first one measured is the score


def check_select_rule(rule: str, where: str = "select rule") -> SelectRule:
    """The one check of a select rule that did not come through the spec (CLI flag, flow parameter)."""
    if rule not in SELECT_RULES:
        raise CompareError(f"{where} '{rule}' is unknown; use one of {', '.join(SELECT_RULES)}")
    return rule  # type: ignore[return-value]


@dataclass(frozen=True)
class VariantResult:
    """What one variant produced: its registry ref, eval report, training record and gates, or an error."""

    id: str
    method: str
    ref: str | None = None
    eval_report: dict | None = None  # the stage's eval/report.json
    record: dict | None = None  # train_record.json
    gates: dict | None = None  # GateResult.to_dict()
    stages: dict[str, str] = field(default_factory=dict)  # {"train": "ran" | "cached", "eval": ...}
    error: str | None = None
    adapter: dict = field(default_factory=dict)  # the resolved behavior.adapter
    derived: tuple[str, ...] = ()  # Variant.derived

    @property
    def ok(self) -> bool:
        return self.error is None and self.eval_report is not None and self.record is not None


@dataclass(frozen=True)
class Measurement:
    """What a variant that trained and evaluated measured (a report row's columns after its identity)."""

    trainable_params: int
    total_params: int
    trainable_pct: float
    train_seconds: float
    tokens_per_second: float
    peak_rss_mb: float
    adapter_mb: float
    scores: dict[str, dict[str, float]]  # {arm: {accuracy, exact_match, answer_f1}}
    score: float | None  # the score metric on the main arm
    forgetting: float | None
    gates_passed: bool | None  # None: not checked
    gates: str  # "pass", "FAIL: metric, ...", "none declared", "not checked"
    intervals: dict[str, dict[str, list[float]]] | None = None  # {arm: {metric: [low, high]}}: bootstrap 95 %


@dataclass
class VariantRow:
    """One row of the report: the variant's identity, its measurement (None when it failed), its Pareto marks."""

    variant: str
    method: str
    adapter: dict
    derived: list[str]
    ref: str | None
    error: str | None
    measured: Measurement | None = None
    pareto_params: bool = False  # on the score-vs-trainable-params front
    pareto_time: bool = False  # on the score-vs-train-time front

    @property
    def score(self) -> float | None:
        return self.measured.score if self.measured is not None else None

    def to_dict(self) -> dict:
        """The report.json row: identity, then the measurement's columns (flat), then the Pareto marks."""
        head = {"variant": self.variant, "method": self.method, "adapter": self.adapter, "derived": self.derived,
                "ref": self.ref, "error": self.error}
        body = asdict(self.measured) if self.measured is not None else {}
        return head | body | {"pareto_params": self.pareto_params, "pareto_time": self.pareto_time}


def score_metric(reports: Sequence[dict]) -> str:
    """The headline metric measured on every report's main arm (accuracy when answers form a label set)."""
    measured = [set(r["arms"][r["main_arm"]]) for r in reports]
    for metric in SCORE_METRICS:
        if measured and all(metric in m for m in measured):
            return metric
    return SCORE_METRICS[1]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """(score, cost) points -> on the front: no other point scores at least as high at no more cost,
    and is strictly better in one of them. Equal points are all on the front."""
    def dominated(i: int) -> bool:
        s, c = points[i]
        return any(s2 >= s and c2 <= c and (s2 > s or c2 < c) for s2, c2 in points)

    return [not dominated(i) for i in range(len(points))]


def variant_row(result: VariantResult, metric: str) -> VariantRow:
    row = VariantRow(result.id, result.method, result.adapter, list(result.derived), result.ref, result.error)
    if not result.ok:
        return row
    rec, rep = result.record, result.eval_report
    keep = ("accuracy", "exact_match", "answer_f1", "contains_answer")
    row.measured = Measurement(
        trainable_params=rec.get("trainable_params"), total_params=rec.get("total_params"),
        trainable_pct=rec.get("trainable_pct"), train_seconds=rec.get("train_seconds"),
        tokens_per_second=rec.get("tokens_per_second"), peak_rss_mb=rec.get("peak_rss_mb"),
        adapter_mb=round(rec.get("adapter_bytes", 0) / 2**20, 6),
        scores={arm: {k: m[k] for k in keep if k in m} for arm, m in rep["arms"].items()},
        score=rep["arms"][rep["main_arm"]].get(metric),
        forgetting=(rep.get("forgetting") or {}).get("forgetting"),
        gates_passed=bool(result.gates["passed"]) if result.gates is not None else None,
        gates=_gate_text(result.gates),
        intervals={arm: {k: v for k, v in m.items() if k in keep} for arm, m in (rep.get("intervals") or {}).items()},
    )
    return row


def _gate_text(gates: dict | None) -> str:
    if gates is None:
        return "not checked"
    if not gates["results"]:
        return "none declared"
    return "pass" if gates["passed"] else "FAIL: " + ", ".join(r["metric"] for r in gates["results"] if not r["passed"])


def _scored(rows: Sequence[VariantRow]) -> list[tuple[VariantRow, Measurement]]:
    return [(r, r.measured) for r in rows if r.measured is not None and r.measured.score is not None]


def mark_pareto(rows: list[VariantRow]) -> None:
    """Set pareto_params (score vs trainable params) and pareto_time (score vs train time) on each row."""
    ok = _scored(rows)
    for flag, cost in (("pareto_params", "trainable_params"), ("pareto_time", "train_seconds")):
        marks = pareto_front([(m.score, getattr(m, cost)) for _, m in ok])
        for row in rows:
            setattr(row, flag, False)
        for (row, _), mark in zip(ok, marks, strict=True):
            setattr(row, flag, mark)


def select_variant(rows: list[VariantRow], rule: str, metric: str, gates: dict[str, str] | None = None) -> dict:
    """{"rule", "chosen": variant id or None, "reason"} for best_score or smallest_passing."""
    rule = check_select_rule(rule)
    ok = _scored(rows)
    if not ok:
        return {"rule": rule, "chosen": None, "reason": f"{rule}: every variant failed, so none is chosen"}
    if rule == "best_score":
        ranked = sorted(ok, key=lambda rm: (-rm[1].score, rm[1].trainable_params, rm[1].train_seconds))
        (best, b), runner = ranked[0], ranked[1] if len(ranked) > 1 else None
        reason = f"best_score: {best.variant} has the highest {metric} ({b.score:.3f}) of {len(ok)} variants"
        if runner is not None:
            tie = " (tie broken by fewer trainable parameters)" if runner[1].score == b.score else ""
            reason += f"{tie}; runner-up {runner[0].variant} ({runner[1].score:.3f})"
        return {"rule": rule, "chosen": best.variant, "reason": reason}
    passing = [(r, m) for r, m in ok if m.gates_passed]
    declared = ", ".join(f"{k} {v}" for k, v in (gates or {}).items()) or "no gates declared"
    if not passing:
        return {"rule": rule, "chosen": None,
                "reason": f"smallest_passing: none of {len(ok)} variants passed the gates ({declared}); nothing chosen"}
    best, b = min(passing, key=lambda rm: (rm[1].trainable_params, -rm[1].score, rm[1].train_seconds))
    reason = (f"smallest_passing: {best.variant} has the fewest trainable parameters ({b.trainable_params:,}) "
              f"of the {len(passing)} of {len(ok)} variants that pass the gates ({declared}); "
              f"its {metric} is {b.score:.3f}")
    return {"rule": rule, "chosen": best.variant, "reason": reason}


def build_report(name: str, results: Sequence[VariantResult], rule: str, gates: dict[str, str] | None = None) -> dict:
    """The comparison report (report.json): one row per variant, Pareto marks, the selection. Only what the
    stages measured goes in, so an unchanged comparison yields an identical report (and no new version)."""
    good = [r for r in results if r.ok]
    metric = score_metric([r.eval_report for r in good])
    rows = [variant_row(r, metric) for r in results]
    mark_pareto(rows)
    first = good[0].eval_report if good else None
    base_arms = {arm: m.get(metric) for arm, m in first["arms"].items() if not arm.startswith("adapter")} if first else {}
    return {
        "name": name, "score_metric": metric, "main_arm": first["main_arm"] if first else None,
        "eval_items": first["items"] if first else None, "base_scores": base_arms,
        "rows": [r.to_dict() for r in rows], "selection": select_variant(rows, rule, metric, gates),
    }
