"""The end-of-run summary for the terminal: the short form of the UI's run-summary artifact.

Read back from the registry (no Prefect import), so `adaptflow run` prints the same whether the
pipeline ran every stage or found the result already registered.
"""

from __future__ import annotations

import json
from typing import Any

from components.evaluation.arms import METRIC_ORDER
from components.evaluation.harness import harness_table
from components.registry import Registry, Version, gate_status


def _interval(report: dict, arm: str, key: str) -> list[float] | None:
    return (report.get("intervals") or {}).get(arm, {}).get(key)


def arm_rows(report: dict) -> list[dict]:
    """One row per arm with the same columns in every row (the UI takes columns from the first row): each metric,
    then `METRIC 95% CI` ('0.35-0.80', its bootstrap interval) where the report has intervals for it."""
    keys = [k for k in METRIC_ORDER if any(k in m for m in report["arms"].values())]
    with_ci = {k for k in keys if any(_interval(report, a, k) for a in report["arms"])}
    rows = []
    for arm, m in report["arms"].items():
        row = {"arm": arm}
        for k in keys:
            row[k] = round(m[k], 4) if k in m else None
            if k in with_ci:
                ci = _interval(report, arm, k)
                row[f"{k} 95% CI"] = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else None
        rows.append(row)
    return rows


def arm_table(report: dict) -> list[str]:
    """The terminal's arm table: each score with its 95 % interval in brackets."""
    rows = arm_rows(report)
    if not rows:
        return []
    cols = [c for c in rows[0] if not c.endswith(" 95% CI")]

    def text(r: dict, c: str) -> str:
        if r[c] is None:
            return "-"
        ci = r.get(f"{c} 95% CI")
        return f"{r[c]:.3f} [{ci}]" if ci else f"{r[c]:.3f}"

    cells = [cols] + [[r["arm"]] + [text(r, c) for c in cols[1:]] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def forgetting_lines(report: dict) -> list[str]:
    """The adapter's forgetting: general-text perplexity, then each lm-evaluation-harness task's base and adapted
    score with the harness's stderr (`evaluation.forgetting.harness`)."""
    f = report.get("forgetting")
    if not f:
        return []
    lines = [f"forgetting: general-text perplexity {f['base_ppl']:.2f} -> {f['adapter_ppl']:.2f} ({f['forgetting']:+.1%})"]
    if f.get("harness"):
        table = harness_table(f["harness"])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        limit = f"limit {f['harness']['limit']}" if f["harness"]["limit"] else "every document"
        lines.append(f"forgetting on lm-eval tasks ({limit}; drop > 0: the adapter lost ground):")
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return lines


def gate_lines(manifest: dict[str, Any], report: dict | None = None) -> list[str]:
    """The gates, each with its value; where the report has the main arm's 95 % interval and it holds the
    threshold, the line says so (the gate compared the point estimate)."""
    status = gate_status(manifest)
    results = (manifest.get("gates") or {}).get("results") or []
    if manifest.get("eval_error"):
        return [f"gates: FAILED (evaluation failed: {manifest['eval_error']})"]
    if not results:
        return ["gates: none declared, so only `latest` moves (declare evaluation.gates to promote)"]
    lines = [f"gates: {'passed' if status == 'passed' else 'FAILED'}"]
    for r in results:
        value = "missing" if r.get("value") is None else f"{r['value']:.4g}"
        mark = "pass" if r.get("passed") else "FAIL"
        ci = _interval(report, report.get("main_arm"), r["metric"]) if report else None
        note = (f"; its 95% interval {ci[0]:.2f}-{ci[1]:.2f} straddles the gate" if ci and r.get("value") is not None
                and ci[0] <= r["threshold"] <= ci[1] else "")
        lines.append(f"  {mark:4}  {r['metric']} = {value} (needs {r['op']} {r['threshold']:g}{note})")
    return lines


def failed_gates(manifest: dict[str, Any]) -> str:
    """'exact_match = 0 (needs >= 0.99)' for each failed gate."""
    if manifest.get("eval_error"):
        return f"evaluation failed: {manifest['eval_error']}"
    rows = [r for r in (manifest.get("gates") or {}).get("results") or [] if not r.get("passed")]
    return "; ".join(
        f"{r['metric']} = {'missing' if r.get('value') is None else format(r['value'], '.4g')} "
        f"(needs {r['op']} {r['threshold']:g})" for r in rows
    ) or "gates failed"


def alias_line(version: Version, aliases: dict[str, int], before: dict[str, int]) -> str:
    here = sorted(a for a, n in aliases.items() if n == version.number)
    moved = [a for a in here if before.get(a) != version.number]
    if gate_status(version.manifest) == "failed":
        kept = ", ".join(f"{a} stays v{n}" for a, n in sorted(aliases.items())) or "no alias set yet"
        return f"aliases: none moved (gates failed): {kept}"
    if moved:
        return "aliases: " + ", ".join(f"{a} -> v{version.number}" + (f" (was v{before[a]})" if a in before else "")
                                       for a in moved)
    return "aliases: " + (", ".join(f"{a} = v{version.number}" for a in here) or "none point here") + " (unchanged)"


def run_summary(registry: Registry, ref: str, before_versions: set[int], before_aliases: dict[str, int]) -> list[str]:
    """Arm table, gates, alias moves and the report's path for the version a run returned."""
    version = registry.resolve(ref)
    status = "new version" if version.number not in before_versions else "identical to an existing version: nothing new registered"
    lines = [f"{version.ref} ({status})"]
    report_path = version.path / "eval" / "report.json"
    report = None
    if report_path.exists():
        report = json.loads(report_path.read_text())
        lines += [f"evaluation ({report.get('items', '?')} items, main arm {report.get('main_arm')}; "
                  "[95% bootstrap interval]):", *arm_table(report)]
        if report.get("tuning_skipped"):
            lines.append(f"  retrieval settings not tuned: {report['tuning_skipped']}")
        if report.get("reader_choice"):
            c = report["reader_choice"]
            lines.append(f"  reader {'kept' if c['reader'] else 'left off'} (by {c['by']}): {c['why']}")
        lines += forgetting_lines(report)
    lines += gate_lines(version.manifest, report)
    lines.append(alias_line(version, registry.aliases(version.name), before_aliases))
    lines.append(f"report: {version.path / 'eval' / 'report.md'}")
    return lines
