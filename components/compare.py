"""Compare adapter variants of one spec: expand the variants, mark Pareto fronts, choose one, render.

A variant is the spec with `behavior.adapter` replaced (and `base_model.quantization` derived where
the method needs it), named `<spec name>--<variant id>`. Everything here is pure: typed specs and
plain report data in, report data, markdown and a PNG out. `flows/compare.py` runs the stages.
See docs/compare.md for the rules in prose.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter

from components.spec import (
    ADAPTER_METHODS,
    PROMPT_LEARNING,
    WEIGHT_METHODS,
    AdapterSpec,
    BaseModelSpec,
    QuantizationSpec,
    TaskSpec,
)

DEFAULT_METHODS = ("lora", "qlora", "ia3", "prompt_tuning", "full")
SCORE_METRICS = ("accuracy", "answer_f1", "contains_answer", "exact_match")  # the first one measured is the score

# Learning rates differ by orders of magnitude between method families (full fine-tuning diverges at
# a LoRA rate; soft prompts barely move at one). A variant of another family than the spec's own
# method starts from its family's rate unless `compare.lr` names one; the report lists what was used.
LR_FAMILIES = {
    "low-rank": ({"lora", "dora", "qlora", "adalora", "loha", "lokr", "hybrid"}, 2.0e-4),
    "ia3": ({"ia3"}, 1.0e-2),
    "prompt": (PROMPT_LEARNING, 3.0e-2),
    "weights": (WEIGHT_METHODS, 5.0e-5),
}


def lr_family(method: str) -> str:
    return next(name for name, (methods, _) in LR_FAMILIES.items() if method in methods)
SELECT_RULES = ("best_score", "smallest_passing")
MAX_NAME = 64  # TaskSpec.name's limit, which registry names of variants must also meet
MAX_ID = 40
_ADAPTER = TypeAdapter(AdapterSpec)


class CompareError(ValueError):
    """A comparison that cannot be set up: the message names the spec field and the fix."""


@dataclass(frozen=True)
class Variant:
    id: str  # [a-z0-9-]; the registry name is `<spec name>--<id>`
    spec: TaskSpec  # the spec to train: name `<spec name>--<id>`, adapter and base model derived, no compare
    overrides: dict  # the adapter keys the user set, e.g. {"method": "lora", "r": 4}
    derived: tuple[str, ...] = ()  # defaults filled in for this variant, shown in the report


# --- expanding variants --------------------------------------------------------------------------


def requested_overrides(spec: TaskSpec, methods: Sequence[str] | None = None) -> list[AdapterSpec]:
    """`methods` (the CLI's --methods) when given; else compare.methods then compare.variants; else
    the spec's own method followed by DEFAULT_METHODS. Each is an adapter with only the user's keys set."""
    if methods:
        names = list(methods)
    elif spec.compare is not None and (spec.compare.methods or spec.compare.variants):
        names = list(spec.compare.methods)
    else:
        names = [spec.behavior.adapter.method, *DEFAULT_METHODS]
    out = [_method_override(name) for name in dict.fromkeys(names)]
    if not methods and spec.compare is not None:
        out += list(spec.compare.variants)
    return out


def _method_override(method: str) -> AdapterSpec:
    try:
        return _ADAPTER.validate_python({"method": method})
    except ValueError:
        raise CompareError(f"unknown method '{method}'; use one of {', '.join(ADAPTER_METHODS)}") from None


def merge_adapter(own: AdapterSpec, override: AdapterSpec) -> AdapterSpec:
    """The override's keys on top of the spec's own adapter (same method) or of the method's defaults."""
    base = own if own.method == override.method else type(override)()
    return type(override).model_validate(base.model_dump() | override.model_dump(exclude_unset=True))


def variant_base_model(base: BaseModelSpec, method: str) -> tuple[BaseModelSpec, str | None]:
    """qlora gets a 4-bit base; full/selective lose quantization; other methods keep the spec's base."""
    quant = base.quantization
    if method == "qlora" and (quant is None or quant.bits != 4):
        note = "base_model.quantization: {bits: 4} (qlora is LoRA on a 4-bit base)"
        return base.model_copy(update={"quantization": QuantizationSpec(bits=4)}), note
    if method in WEIGHT_METHODS and quant is not None:
        note = f"base_model.quantization: null ({method} trains base weights, which cannot be 4/8-bit)"
        return base.model_copy(update={"quantization": None}), note
    return base, None


def variant_id(override: AdapterSpec) -> str:
    """'lora', 'lora-r4', 'lora-r16-all-linear', 'prompt-tuning-nvt8': the method and the keys the user set."""
    parts = [override.method] + [
        _id_part(key, value)
        for key, value in override.model_dump(mode="json", exclude_unset=True, exclude={"method"}).items()
    ]
    text = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if len(text) <= MAX_ID:
        return text
    digest = hashlib.sha256(json.dumps(override.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    return f"{override.method.replace('_', '-')}-{digest[:8]}"


def _id_part(key: str, value: object) -> str:
    short = key if "_" not in key else "".join(word[0] for word in key.split("_"))
    if isinstance(value, bool):
        return short if value else f"no-{short}"
    if value is None:
        return f"no-{short}"
    if isinstance(value, int | float):
        return f"{short}{value}"
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    return str(value)


def expand_variants(spec: TaskSpec, methods: Sequence[str] | None = None) -> list[Variant]:
    """One `Variant` per requested adapter; two variants with the same resolved adapter are an error."""
    if spec.behavior is None:
        raise CompareError(f"spec '{spec.name}' has no `behavior:` section; compare varies behavior.adapter, so add one")
    variants: list[Variant] = []
    seen: dict[str, str] = {}
    bases = spec.compare.base_models if spec.compare is not None and spec.compare.base_models else [None]
    for base_id, override in ((b, o) for b in bases for o in requested_overrides(spec, methods)):
        variant = _variant(spec, override, base_id)
        fingerprint = json.dumps(
            [variant.spec.behavior.adapter.model_dump(mode="json"), variant.spec.base_model.model_dump(mode="json")],
            sort_keys=True,
        )
        if variant.id in {v.id for v in variants} or fingerprint in seen:
            twin = seen.get(fingerprint, variant.id)
            raise CompareError(
                f"compare variant {variant.overrides} resolves to the same adapter as '{twin}'; "
                "remove one of them from compare.methods / compare.variants (or --methods)"
            )
        seen[fingerprint] = variant.id
        variants.append(variant)
    return variants


def base_slug(base_id: str) -> str:
    """'HuggingFaceTB/SmolLM2-360M-Instruct' -> 'smollm2-360m-instruct' (a variant id prefix)."""
    return re.sub(r"[^a-z0-9]+", "-", str(base_id).rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")[:24] or "base"


def _variant(spec: TaskSpec, override: AdapterSpec, base_id: str | None = None) -> Variant:
    vid = variant_id(override) if base_id is None else f"{base_slug(base_id)}-{variant_id(override)}"
    name = f"{spec.name}--{vid}"
    if len(name) > MAX_NAME:
        raise CompareError(
            f"variant name '{name}' is {len(name)} characters, over the {MAX_NAME} a registry name allows; "
            f"shorten the spec's `name` to at most {MAX_NAME - len(vid) - 2} characters"
        )
    adapter = merge_adapter(spec.behavior.adapter, override)
    own_base = spec.base_model if base_id is None else spec.base_model.model_copy(update={"id": base_id})
    base, note = variant_base_model(own_base, adapter.method)
    if base_id is not None:
        note = "; ".join(n for n in (f"base_model.id: {base_id} (compare.base_models)", note) if n)
    data = spec.model_dump(mode="json") | {"name": name, "compare": None, "base_model": base.model_dump(mode="json")}
    data["behavior"]["adapter"] = adapter.model_dump(mode="json")
    lr, lr_note = variant_lr(spec, adapter.method)
    data["behavior"]["training"]["lr"] = lr
    source = "behavior.adapter" if spec.behavior.adapter.method == adapter.method else f"{adapter.method}'s defaults"
    derived = tuple(n for n in [f"adapter keys not given come from {source}", note, lr_note] if n)
    return Variant(vid, TaskSpec.model_validate(data), override.model_dump(mode="json", exclude_unset=True), derived)


def variant_lr(spec: TaskSpec, method: str) -> tuple[float, str | None]:
    """(learning rate, note): compare.lr[method] if given; the spec's own rate within its method's family;
    otherwise the family's default, noted so the report says where the number came from."""
    own = spec.behavior.training.lr
    chosen = (spec.compare.lr if spec.compare is not None else {}).get(method)
    if chosen is not None:
        return chosen, f"training.lr: {chosen:g} (compare.lr.{method})"
    family = lr_family(method)
    if family == lr_family(spec.behavior.adapter.method):
        return own, None
    default = LR_FAMILIES[family][1]
    return default, (f"training.lr: {default:g} ({family} methods' default; the spec's {own:g} is for "
                     f"{spec.behavior.adapter.method}; set compare.lr.{method} to change it)")


def parallel_slots(n_variants: int, cpus: int, available_mb: float, per_variant_mb: float,
                   cores_per_variant: int = 4) -> int:
    """How many variants may train at once: enough cores and memory for each, at least one."""
    by_cpu = cpus // cores_per_variant
    by_memory = int(available_mb // per_variant_mb) if per_variant_mb > 0 else by_cpu
    return max(1, min(n_variants, by_cpu, by_memory))


# --- results, Pareto fronts, selection -------------------------------------------------------------


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


def _row(result: VariantResult, metric: str) -> dict:
    row: dict = {"variant": result.id, "method": result.method, "adapter": result.adapter,
                 "derived": list(result.derived), "ref": result.ref, "error": result.error}
    if not result.ok:
        return row
    rec, rep = result.record, result.eval_report
    row |= {k: rec.get(k) for k in ("trainable_params", "total_params", "trainable_pct", "train_seconds",
                                     "tokens_per_second", "peak_rss_mb")}
    row["adapter_mb"] = round(rec.get("adapter_bytes", 0) / 2**20, 6)
    keep = ("accuracy", "exact_match", "answer_f1")
    row["scores"] = {arm: {k: m[k] for k in keep if k in m} for arm, m in rep["arms"].items()}
    row["score"] = rep["arms"][rep["main_arm"]].get(metric)
    row["forgetting"] = (rep.get("forgetting") or {}).get("forgetting")
    row["gates_passed"] = bool(result.gates["passed"]) if result.gates is not None else None
    row["gates"] = _gate_text(result.gates)
    return row


def _gate_text(gates: dict | None) -> str:
    if gates is None:
        return "not checked"
    if not gates["results"]:
        return "none declared"
    return "pass" if gates["passed"] else "FAIL: " + ", ".join(r["metric"] for r in gates["results"] if not r["passed"])


def mark_pareto(rows: list[dict]) -> None:
    """Set pareto_params (score vs trainable params) and pareto_time (score vs train time) on each row."""
    ok = [r for r in rows if r.get("score") is not None]
    for flag, cost in (("pareto_params", "trainable_params"), ("pareto_time", "train_seconds")):
        marks = pareto_front([(r["score"], r[cost]) for r in ok])
        for row in rows:
            row[flag] = False
        for row, mark in zip(ok, marks, strict=True):
            row[flag] = mark


def select_variant(rows: list[dict], rule: str, metric: str, gates: dict[str, str] | None = None) -> dict:
    """{"rule", "chosen": variant id or None, "reason"} for best_score or smallest_passing."""
    ok = [r for r in rows if r.get("score") is not None]
    if rule not in SELECT_RULES:
        raise CompareError(f"select rule '{rule}' is unknown; use one of {', '.join(SELECT_RULES)}")
    if not ok:
        return {"rule": rule, "chosen": None, "reason": f"{rule}: every variant failed, so none is chosen"}
    if rule == "best_score":
        ranked = sorted(ok, key=lambda r: (-r["score"], r["trainable_params"], r["train_seconds"]))
        best = ranked[0]
        reason = f"best_score: {best['variant']} has the highest {metric} ({best['score']:.3f}) of {len(ok)} variants"
        if len(ranked) > 1:
            runner = ranked[1]
            tie = " (tie broken by fewer trainable parameters)" if runner["score"] == best["score"] else ""
            reason += f"{tie}; runner-up {runner['variant']} ({runner['score']:.3f})"
        return {"rule": rule, "chosen": best["variant"], "reason": reason}
    passing = [r for r in ok if r["gates_passed"]]
    declared = ", ".join(f"{k} {v}" for k, v in (gates or {}).items()) or "no gates declared"
    if not passing:
        return {"rule": rule, "chosen": None,
                "reason": f"smallest_passing: none of {len(ok)} variants passed the gates ({declared}); nothing chosen"}
    best = min(passing, key=lambda r: (r["trainable_params"], -r["score"], r["train_seconds"]))
    reason = (f"smallest_passing: {best['variant']} has the fewest trainable parameters ({best['trainable_params']:,}) "
              f"of the {len(passing)} of {len(ok)} variants that pass the gates ({declared}); "
              f"its {metric} is {best['score']:.3f}")
    return {"rule": rule, "chosen": best["variant"], "reason": reason}


def build_report(name: str, results: Sequence[VariantResult], rule: str, gates: dict[str, str] | None = None) -> dict:
    """The comparison report (report.json): one row per variant, Pareto marks, the selection. Only what the
    stages measured goes in, so an unchanged comparison yields an identical report (and no new version)."""
    good = [r for r in results if r.ok]
    metric = score_metric([r.eval_report for r in good])
    rows = [_row(r, metric) for r in results]
    mark_pareto(rows)
    first = good[0].eval_report if good else None
    base_arms = {arm: m.get(metric) for arm, m in first["arms"].items() if not arm.startswith("adapter")} if first else {}
    return {
        "name": name, "score_metric": metric, "main_arm": first["main_arm"] if first else None,
        "eval_items": first["items"] if first else None, "base_scores": base_arms,
        "rows": rows, "selection": select_variant(rows, rule, metric, gates),
    }


# --- rendering: markdown, table rows, chart ------------------------------------------------------


def _fmt(value: object, spec: str = "", empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def _fronts(row: dict) -> str:
    marks = [label for flag, label in (("pareto_params", "params"), ("pareto_time", "time")) if row.get(flag)]
    return ", ".join(marks) or "–"


def _adapter_arms(report: dict) -> list[str]:
    arms = {arm for row in report["rows"] for arm in (row.get("scores") or {})}
    return [a for a in ("adapter", "adapter+retrieval") if a in arms]


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
        main = row["scores"][report["main_arm"]]
        flat |= {"exact_match": round(main.get("exact_match", float("nan")), 4),
                 "answer_f1": round(main.get("answer_f1", float("nan")), 4), "forgetting": row["forgetting"],
                 "gates": row["gates"], "pareto_front": _fronts(row)}
        out.append(flat)
    return out


def render_markdown(report: dict, chart: str | None = None) -> str:
    """report.md: the table, the Pareto fronts, the selection and any failed variant."""
    metric, main, arms = report["score_metric"], report["main_arm"], _adapter_arms(report)
    base = ", ".join(f"{arm} {v:.3f}" for arm, v in report["base_scores"].items() if v is not None) or "–"
    lines = [f"# Comparison of {report['name']}", "",
             f"{len(report['rows'])} variants, {report['eval_items']} eval items, greedy decoding. Score: **{metric}** "
             f"on the `{main}` arm. Without an adapter: {base}. Pareto front: no other variant scores at least as "
             "high with fewer trainable parameters (params) or less train time (time).", ""]
    head = ["variant", "method", "trainable params", "trainable %", "adapter MB", "train s", "tokens/s",
            "peak RSS MB", *[f"{metric} ({a})" for a in arms], "exact match", "F1", "forgetting", "gates", "Pareto front"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        if row.get("error"):
            lines.append(f"| {row['variant']} | {row['method']} | failed: see below |" + " |" * (len(head) - 3))
            continue
        m = row["scores"][main]
        cells = [row["variant"], row["method"], f"{row['trainable_params']:,}", f"{row['trainable_pct']:.3g}%",
                 f"{row['adapter_mb']:.3g}", f"{row['train_seconds']:.0f}", f"{row['tokens_per_second']:.0f}",
                 f"{row['peak_rss_mb']:,.0f}", *[_fmt(row["scores"][a].get(metric), ".3f") for a in arms],
                 _fmt(m.get("exact_match"), ".3f"), _fmt(m.get("answer_f1"), ".3f"), _fmt(row["forgetting"], "+.1%"),
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
    if main_base is not None:
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
