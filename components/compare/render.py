"""Rendering a comparison report: table rows for a Prefect artifact, report.md, chart.png.

Reads the report as `build_report` returns it (and as report.json stores it), so a stored report renders
the same as a fresh one.
"""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(value: object, spec: str = "", empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def _scored(row: dict, arm: str, key: str) -> str:
    """'0.900 [0.83, 0.95]': a variant's score on one arm with its bootstrap 95 % interval where measured."""
    value = (row.get("scores") or {}).get(arm, {}).get(key)
    if value is None:
        return "–"
    ci = ((row.get("intervals") or {}).get(arm) or {}).get(key)
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f}"


def _ci(row: dict, arm: str, key: str) -> str | None:
    ci = ((row.get("intervals") or {}).get(arm) or {}).get(key)
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else None


def _fronts(row: dict) -> str:
    marks = [label for flag, label in (("pareto_params", "params"), ("pareto_time", "time")) if row.get(flag)]
    return ", ".join(marks) or "–"


def _adapter_arms(report: dict) -> list[str]:
    arms = {arm for row in report["rows"] for arm in (row.get("scores") or {})}
    return [a for a in ("adapter", "adapter+retrieval") if a in arms]


def _own_base_arms(report: dict) -> list[str]:
    """The no-adapter arms whose score differs between variants (a model axis: each variant has its own base),
    shown as columns of their own; none when every variant shares one base."""
    metric, ok = report["score_metric"], [r for r in report["rows"] if not r.get("error")]
    arms = {arm for row in ok for arm in row["scores"]}
    return [a for a in ("base", "base+retrieval") if a in arms
            and len({row["scores"].get(a, {}).get(metric) for row in ok}) > 1]


def table_rows(report: dict) -> list[dict]:
    """Flat rows for a Prefect table artifact: one per variant, the report's columns."""
    metric, out = report["score_metric"], []
    for row in report["rows"]:
        flat = {"variant": row["variant"], "method": row["method"]}
        if row.get("error"):
            out.append(flat | {"error": row["error"][:200]})
            continue
        flat |= {"trainable_params": row["trainable_params"], "trainable_pct": round(row["trainable_pct"], 4),
                 "adapter_mb": row["adapter_mb"], "train_s": round(row["train_seconds"], 1),
                 "tokens_per_s": round(row["tokens_per_second"], 1), "peak_rss_mb": round(row["peak_rss_mb"])}
        for arm in _adapter_arms(report):
            flat[f"{metric} ({arm})"] = round(row["scores"][arm].get(metric, float("nan")), 4)
            flat[f"{metric} ({arm}) 95% CI"] = _ci(row, arm, metric)
        main = row["scores"][report["main_arm"]]
        flat |= {"exact_match": round(main.get("exact_match", float("nan")), 4),
                 "answer_f1": round(main.get("answer_f1", float("nan")), 4), "forgetting": row["forgetting"],
                 "gates": row["gates"], "pareto_front": _fronts(row)}
        out.append(flat)
    return out


def render_markdown(report: dict, chart: str | None = None) -> str:
    """report.md: the table, the Pareto fronts, the selection and any failed variant."""
    metric, main, own = report["score_metric"], report["main_arm"], _own_base_arms(report)
    arms = own + _adapter_arms(report)
    base = ", ".join(f"{arm} {v:.3f}" for arm, v in report["base_scores"].items() if v is not None) or "–"
    if own:
        base = f"each variant's own base model, in the {', '.join(f'`{metric} ({a})`' for a in own)} column"
    lines = [f"# Comparison of {report['name']}", "",
             f"{len(report['rows'])} variants, {report['eval_items']} eval items, greedy decoding. Score: **{metric}** "
             f"on the `{main}` arm, each with its bootstrap 95 % interval [low, high]. Without an adapter: {base}. Pareto front: no other variant scores at least as "
             "high with fewer trainable parameters (params) or less train time (time).", ""]
    head = ["variant", "method", "trainable params", "trainable %", "adapter MB", "train s", "tokens/s",
            "peak RSS MB", *[f"{metric} ({a})" for a in arms], "exact match", "F1", "forgetting", "gates", "Pareto front"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        if row.get("error"):
            lines.append(f"| {row['variant']} | {row['method']} | failed: see below |" + " |" * (len(head) - 3))
            continue
        cells = [row["variant"], row["method"], f"{row['trainable_params']:,}", f"{row['trainable_pct']:.3g}%",
                 f"{row['adapter_mb']:.3g}", f"{row['train_seconds']:.0f}", f"{row['tokens_per_second']:.0f}",
                 f"{row['peak_rss_mb']:,.0f}", *[_scored(row, a, metric) for a in arms],
                 _scored(row, main, "exact_match"), _scored(row, main, "answer_f1"), _fmt(row["forgetting"], "+.1%"),
                 row["gates"], _fronts(row)]
        lines.append("| " + " | ".join(cells) + " |")
    sel = report["selection"]
    lines += ["", f"**Selected: {sel['chosen'] or 'none'}** — {sel['reason']}."]
    failed = [r for r in report["rows"] if r.get("error")]
    if failed:
        lines += ["", "Failed variants:"] + [f"- {r['variant']}: {r['error'].splitlines()[0][:300]}" for r in failed]
    if chart:
        lines += ["", f"![{metric} against trainable parameters]({chart})"]
    return "\n".join(lines) + "\n"


def plot_chart(report: dict, path: Path) -> None:
    """Score against trainable parameters (log x), point area ~ train time, the params front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("score") is not None and r["trainable_params"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    longest = max((r["train_seconds"] for r in rows), default=1.0) or 1.0
    for row in rows:
        size = 40 + 600 * row["train_seconds"] / longest
        color = "tab:orange" if row["pareto_params"] else "tab:blue"
        ax.scatter(row["trainable_params"], row["score"], s=size, color=color, alpha=0.6, edgecolor="black")
        ax.annotate(f"{row['variant']} ({row['train_seconds']:.0f} s)", (row["trainable_params"], row["score"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = sorted((r for r in rows if r["pareto_params"]), key=lambda r: r["trainable_params"])
    if len(front) > 1:
        ax.step([r["trainable_params"] for r in front], [r["score"] for r in front], where="post",
                color="tab:orange", linewidth=1, label="Pareto front (score vs params)")
    main_base = report["base_scores"].get("base+retrieval" if report["main_arm"] == "adapter+retrieval" else "base")
    if main_base is not None and not _own_base_arms(report):  # one line only when every variant shares the base
        ax.axhline(main_base, linestyle="--", color="gray", linewidth=1, label="no adapter")
    ax.set_xscale("log")
    if rows:  # room for the labels; scores are fractions
        params = [r["trainable_params"] for r in rows]
        ax.set_xlim(min(params) / 3, max(params) * 8)
        ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("trainable parameters (log scale); point area ~ train time")
    ax.set_ylabel(f"{report['score_metric']} ({report['main_arm']} arm)")
    ax.set_title(f"{report['name']}: score vs trainable parameters")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_report(report: dict, folder: Path) -> dict[str, Path]:
    """report.json, report.md and chart.png in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "chart": folder / "chart.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    plot_chart(report, paths["chart"])
    paths["markdown"].write_text(render_markdown(report, chart="chart.png"))
    return paths
