"""Quality gates: the spec's `evaluation.gates` checked against measured metrics.

A gate whose metric was not measured fails (with a reason): a missing number must never read
as a pass, or a broken evaluation would promote a model.

No gates means no promotion: a version registered without gates moves `latest` only; moving
`evaluation.promote_to` (default `production`) needs at least one gate, and all must pass. A
person can still move an alias by hand (`adaptflow registry promote`), which is a decision, not
an accident. The registry applies the same rule (`gate_status` is 'unknown' without gates).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.spec import parse_gate

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    # metrics are floats computed by averaging; exact float equality would be an accident
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}


@dataclass(frozen=True)
class GateResult:
    """`passed` is True only when every gate passed (vacuously True with no gates: see `promotable`).

    Each result is {metric, op, threshold, value, passed, reason}; value is None when missing.
    """

    passed: bool
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def promotable(self) -> bool:
        """Whether `evaluation.promote_to` may move: at least one gate, and every gate passed."""
        return self.passed and bool(self.results)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["passed"]]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `gates` entry."""
        return {"passed": self.passed, "results": [dict(r) for r in self.results]}

    def summary(self) -> str:
        """'answer_f1 0.42 >= 0.5: FAIL; forgetting 0.03 <= 0.15: pass'."""
        return "; ".join(describe_gate(r) for r in self.results) or "no gates (only `latest` moves)"


def describe_gate(row: Mapping[str, Any]) -> str:
    value = "missing" if row.get("value") is None else f"{row['value']:.4g}"
    return f"{row['metric']} {value} {row['op']} {row['threshold']:g}: {'pass' if row['passed'] else 'FAIL'}"


def _check(metric: str, expr: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    try:
        op, threshold = parse_gate(expr)
    except ValueError as exc:
        raise ValueError(f"evaluation.gates.{metric}: {exc}") from exc
    value = metrics.get(metric)
    row = {"metric": metric, "op": op, "threshold": threshold, "value": None, "passed": False, "reason": None}
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        measured = ", ".join(sorted(metrics)) or "none"
        row["reason"] = (
            f"metric '{metric}' was not measured (got {value!r}; measured: {measured}); "
            "add the evaluation that produces it or remove the gate"
        )
        return row
    row["value"] = float(value)
    row["passed"] = _OPS[op](float(value), threshold)
    if not row["passed"]:
        row["reason"] = f"{metric} = {value:.4g}, needs {op} {threshold:g}"
    return row


def evaluate_gates(gates: Mapping[str, str], metrics: Mapping[str, Any]) -> GateResult:
    """Check each `{metric: "<op> <number>"}` gate against `metrics`; all must pass."""
    results = [_check(metric, expr, metrics) for metric, expr in gates.items()]
    return GateResult(passed=all(r["passed"] for r in results), results=results)


def promotion_rule(gates: Mapping[str, str], promote_to: str) -> str:
    """One line for `adaptflow plan`: which aliases a run of this spec can move, and why."""
    if not gates:
        return (f"no evaluation.gates: a run moves only `latest`; `{promote_to}` moves only when at least one gate "
                f"is declared and passes (add e.g. gates: {{answer_f1: \">= 0.5\"}}), or by hand with "
                "`adaptflow registry promote`")
    listed = ", ".join(f"{metric} {expr.strip()}" for metric, expr in gates.items())
    return f"`latest` and `{promote_to}` move only if every gate passes ({listed}); otherwise no alias moves"
