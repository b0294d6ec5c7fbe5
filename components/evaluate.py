"""Evaluate a system against its parts: {base, base+adapter} x {no retrieval, retrieval}.

Also forgetting (relative perplexity change on a general-text sample we ship) and efficiency
(training record + p50/p95 query latency split into retrieval and generation). Greedy decoding.
Writes eval/report.json, report.md and loss.png.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from components.metrics import aggregate, contains_answer, exact_match, label_accuracy, percentile, token_f1
from components.prompting import with_context
from components.spec import TaskSpec

GENERAL_TEXT = "general.txt"
ANSWER_METRICS = ("accuracy", "exact_match", "answer_f1", "contains_answer")
METRIC_ORDER = (*ANSWER_METRICS, "hit_at_k", "mrr")


class EvalDataError(ValueError):
    pass


@dataclass(frozen=True)
class EvalItem:
    messages: list[dict]  # the prompt, without the answer
    query: str  # what retrieval searches for
    answer: str
    doc_ids: list[str]
    alternatives: tuple[str, ...] = ()  # other acceptable answers ("3.2 kilometers" for "3.2 kilometres")

    @property
    def golds(self) -> list[str]:
        return [self.answer, *self.alternatives]


def _answers(value: object, where: str) -> list[str]:
    """`answer`: one string, or a list of acceptable answers with the preferred one first (SQuAD-style)."""
    if isinstance(value, list):
        if not value or not all(isinstance(a, str | int | float) and str(a).strip() for a in value):
            raise EvalDataError(f"{where}: 'answer' is a list, so it must hold non-empty strings; "
                                "give one answer or a list of acceptable ones")
        return [str(a) for a in value]
    if value is None or not str(value).strip():  # checked at validate too (components/preflight.py)
        raise EvalDataError(f"{where}: 'answer' is null or empty; write the expected answer")
    return [str(value)]


def _item_from_row(row: dict, where: str) -> EvalItem:
    if "answer" not in row:
        raise EvalDataError(f"{where}: missing field 'answer'; every evaluation row needs the expected answer")
    answers = _answers(row["answer"], where)
    if "messages" in row:
        msgs = [m for m in row["messages"] if m["role"] != "assistant"]
    elif "question" in row:
        msgs = [{"role": "user", "content": row["question"]}]
    else:
        raise EvalDataError(f"{where}: needs 'question' or 'messages'; add one of them")
    query = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
    return EvalItem(msgs, query, answers[0], list(row.get("doc_ids", [])), tuple(answers[1:]))


def load_eval_items(spec: TaskSpec) -> list[EvalItem]:
    """The spec's evaluation set, or the behavior eval split when none is given."""
    ev = spec.evaluation
    if ev is not None and ev.data is not None:
        items = []
        for n, line in enumerate(Path(ev.data).read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalDataError(f"{ev.data} line {n}: not JSON ({exc.msg}); one object per line") from None
                items.append(_item_from_row(row, f"{ev.data} line {n}"))
        if not items:
            raise EvalDataError(f"{ev.data}: no rows; add {{\"question\", \"answer\"}} lines")
        return items
    if spec.behavior is None:
        raise EvalDataError("evaluation.data is missing and there is no behavior eval split; add evaluation.data")
    from components.data import load_examples, prompt_messages

    _, evals = load_examples(spec.behavior.data)
    return [
        EvalItem(prompt_messages(ex), prompt_messages(ex)[-1]["content"], ex.messages[-1]["content"], [])
        for ex in evals
    ]


def label_set(items: list[EvalItem]) -> set[str] | None:
    """Gold answers form a label set when they are few, short and repeated (classification-style)."""
    labels = {i.answer.strip().lower() for i in items}
    short = all(len(a.split()) <= 3 for a in labels)
    return labels if short and len(labels) <= 20 and len(labels) <= len(items) / 2 else None


def arms_for(route_behavior: bool, route_knowledge: bool) -> list[str]:
    arms = ["base"]
    if route_behavior:
        arms.append("adapter")
    if route_knowledge:
        arms.append("base+retrieval")
    if route_behavior and route_knowledge:
        arms.append("adapter+retrieval")
    return arms


def score_arm(system, items: list[EvalItem], arm: str, labels: set[str] | None,
              on_batch: Callable[[int, int], None] | None = None) -> tuple[dict, list[dict]]:
    use_adapter, use_retrieval = arm.startswith("adapter"), arm.endswith("+retrieval")
    hits = [system.retrieve(i.query) for i in items] if use_retrieval else [[] for _ in items]
    prompts = [with_context(i.messages, [(h.title, h.text) for h in hs]) for i, hs in zip(items, hits, strict=True)]
    preds = system.generate(prompts, use_adapter=use_adapter, on_batch=on_batch)
    rows = []
    for item, pred, hs in zip(items, preds, hits, strict=True):
        golds = item.golds
        row = {"prediction": pred, "answer": item.answer, "exact_match": exact_match(pred, golds),
               "answer_f1": token_f1(pred, golds), "contains_answer": contains_answer(pred, golds)}
        if labels is not None:
            row["accuracy"] = label_accuracy(pred, item.answer, labels)
        if use_retrieval:
            row["retrieved"] = [h.doc_id for h in hs]
        rows.append(row)
    metrics = aggregate([{k: float(r[k]) for k in ANSWER_METRICS if k in r} for r in rows])
    if use_retrieval and any(i.doc_ids for i in items):
        from vectorstore import retrieval_metrics

        gold = [(i.doc_ids, [h.doc_id for h in hs]) for i, hs in zip(items, hits, strict=True) if i.doc_ids]
        rm = retrieval_metrics([g[1] for g in gold], [g[0] for g in gold], k=system.top_k)
        metrics |= {"hit_at_k": rm["hit_at_k"], "mrr": rm["mrr"]}
    return metrics, rows


def perplexity(model, tokenizer, text: str, window: int = 256) -> float:
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1].unsqueeze(0).to(model.device)
            out = model(input_ids=chunk, labels=chunk)
            n = chunk.shape[1] - 1
            nll += float(out.loss) * n
            count += n
    return math.exp(nll / count)


def forgetting(system, text: str | None = None) -> dict:
    """Relative perplexity change on general text, adapter vs base (0.05 = 5% worse)."""
    text = text or resources.files("components").joinpath("resources", GENERAL_TEXT).read_text()
    tok = system.handle.tokenizer
    with system.using(use_adapter=False) as model:
        base = perplexity(model, tok, text)
    with system.using(use_adapter=True) as model:
        tuned = perplexity(model, tok, text)
    return {"base_ppl": round(base, 4), "adapter_ppl": round(tuned, 4), "forgetting": round(tuned / base - 1, 4)}


def query_latency(system, items: list[EvalItem], use_adapter: bool, use_retrieval: bool, n: int = 8) -> dict:
    runs = [system.query(messages=i.messages, use_adapter=use_adapter, use_retrieval=use_retrieval) for i in items[:n]]
    out = {}
    for key in ("latency_ms", "retrieval_ms", "generation_ms"):
        values = [getattr(r, key) for r in runs]
        out[key.replace("_ms", "_p50_ms")] = round(percentile(values, 50), 1)
        out[key.replace("_ms", "_p95_ms")] = round(percentile(values, 95), 1)
    return out


def main_arm(arms: list[str]) -> str:
    return arms[-1]


def evaluate(system, spec: TaskSpec, arms: list[str], out_dir: Path, train_record: dict | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Run every arm, forgetting and latency; write report.json, report.md, loss.png; return the report.

    Progress shows on the terminal (one bar per arm) and goes to `progress(done, total)` over all arms.
    """
    items = load_eval_items(spec)
    labels = label_set(items)
    t0 = time.perf_counter()
    report: dict = {"arms": {}, "items": len(items), "label_set": sorted(labels) if labels else None}
    samples = {}
    total = len(items) * len(arms)
    for n, arm in enumerate(arms):
        with tqdm(total=len(items), desc=f"evaluate {arm}", unit="item", dynamic_ncols=True) as bar:
            def on_batch(done: int, _total: int, n: int = n, bar=bar) -> None:
                bar.update(done - bar.n)
                if progress is not None:
                    progress(n * len(items) + done, total)

            report["arms"][arm], rows = score_arm(system, items, arm, labels, on_batch)
            bar.set_postfix({k: round(v, 3) for k, v in report["arms"][arm].items()})
        samples[arm] = rows[:5]
    main = main_arm(arms)
    report["main_arm"] = main
    if "adapter" in arms:
        report["forgetting"] = forgetting(system, _forgetting_text(spec))
    report["efficiency"] = _efficiency(train_record)
    report["timings"] = _timings(train_record) | query_latency(
        system, items, main.startswith("adapter"), main.endswith("+retrieval")
    )
    report["timings"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    report["metrics"] = gate_metrics(report)
    report["samples"] = samples
    out_dir.mkdir(parents=True, exist_ok=True)
    # timings differ on every run; the returned report holds them, the files do not (see TIMING_KEYS)
    (out_dir / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "timings"}, indent=2))
    (out_dir / "report.md").write_text(render_markdown(report, spec.name))
    if train_record and train_record.get("loss_curve"):
        plot_loss(train_record, out_dir / "loss.png")
    return report


def _forgetting_text(spec: TaskSpec) -> str | None:
    ev = spec.evaluation
    return Path(ev.forgetting_text).read_text() if ev is not None and ev.forgetting_text else None


# Wall times, throughput and memory: measured again on every run, so they live in the returned
# report's "timings" (and a manifest's volatile section), never in report.json / report.md, whose
# bytes decide whether a run made a new registry version.
TIMING_KEYS = ("train_seconds", "tokens_per_second", "peak_rss_mb")


def _efficiency(record: dict | None) -> dict:
    if not record:
        return {}
    keys = ("method", "trainable_params", "total_params", "trainable_pct", "adapter_bytes")
    out = {k: record[k] for k in keys if k in record}
    if "adapter_bytes" in out:
        out["adapter_mb"] = round(out["adapter_bytes"] / 2**20, 3)
    return out


def _timings(record: dict | None) -> dict:
    return {k: record[k] for k in TIMING_KEYS if k in record} if record else {}


def gate_metrics(report: dict) -> dict:
    """The numbers gates are checked against: the main arm's, plus forgetting."""
    metrics = dict(report["arms"][report["main_arm"]])
    if "forgetting" in report:
        metrics["forgetting"] = report["forgetting"]["forgetting"]
    return metrics


def _headline(metrics: dict) -> str:
    return next(k for k in ("accuracy", "answer_f1", "contains_answer", "exact_match") if k in metrics)


def render_markdown(report: dict, name: str) -> str:
    arms = report["arms"]
    present = {k for m in arms.values() for k in m}
    keys = [k for k in METRIC_ORDER if k in present]
    lines = [f"# Evaluation of {name}", "", f"{report['items']} items, greedy decoding.", ""]
    lines += ["| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for arm, m in arms.items():
        lines.append(f"| {arm} | " + " | ".join(f"{m[k]:.3f}" if k in m else "–" for k in keys) + " |")
    head = _headline(arms[report["main_arm"]])
    ranked = sorted(arms, key=lambda a: arms[a].get(head, 0), reverse=True)
    best = ranked[0]
    margin = arms[best].get(head, 0) - (arms[ranked[1]].get(head, 0) if len(ranked) > 1 else 0)
    runner = f" by {margin:+.3f} over {ranked[1]}" if len(ranked) > 1 else ""
    lines += ["", f"**Winner on {head}: {best}**{runner}."]
    if "forgetting" in report:
        f = report["forgetting"]
        lines.append(f"Forgetting: general-text perplexity {f['base_ppl']:.2f} -> {f['adapter_ppl']:.2f} ({f['forgetting']:+.1%}).")
    eff = report.get("efficiency", {})
    if eff:
        lines += ["", "| efficiency | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in eff.items()]
    return "\n".join(lines) + "\n"


def plot_loss(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    curve = record["loss_curve"]
    ax.plot([p[0] for p in curve], [p[1] for p in curve], label="train loss")
    evals = record.get("eval_history") or []
    if evals:
        ax.plot([p[0] for p in evals], [p[1] for p in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
