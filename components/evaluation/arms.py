"""Evaluate a system against its parts: {base, base+adapter} x {no retrieval, retrieval}.

Where the evaluation rows carry `doc_ids`, each retrieval arm also gets its ceiling: the same
model and prompt with the gold documents as context instead of the retrieved chunks (the
`gold-context` arms). The gap splits into a retrieval loss (gold context minus retrieved) and a
reading loss (a perfect answer minus gold context), in contains-answer points. Rows whose answer
is the abstain phrase are unanswerable: they are scored by `abstain`, not by the answer metrics.
A knowledge spec with a reader adds `reader+retrieval` beside `base+retrieval` (components.training.reader).

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

from components.evaluation.harness import add_to_report as add_harness_forgetting
from components.evaluation.harness import harness_lines
from components.evaluation.metrics import (
    abstained,
    aggregate,
    bootstrap_interval,
    contains_answer,
    exact_match,
    is_abstention,
    label_accuracy,
    percentile,
    token_f1,
)
from components.models.prompting import with_context
from components.spec import TaskSpec
from components.spec.evalset import (
    TUNE_MIN,
    EvalDataError,
    is_held_out,
    question_key,
    read_eval_file,
    resolve_gold_ids,
    retrieval_metrics,
)

GENERAL_TEXT = "general.txt"
ANSWER_METRICS = ("accuracy", "exact_match", "answer_f1", "contains_answer")
LOSS_METRIC = "contains_answer"  # what the retrieval and reading losses are measured in
METRIC_ORDER = (*ANSWER_METRICS, "abstain", "hit_at_k", "mrr", "retrieval_loss", "reading_loss")
ROW_METRICS = (*ANSWER_METRICS, "abstain", "hit_at_k", "mrr")  # scored per row, so each carries a bootstrap interval
# knowledge.reader: auto on the built-in base when the held-out third is too small to decide: whether the builtin
# reader ships, as measured across every frozen corpus of specs/data/unseen/ and lore (docs/reading.md).
READER_RULE = True
GOLD = "gold-context"
ADAPTER_MODELS = ("adapter", "reader")


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

    @property
    def unanswerable(self) -> bool:
        return is_abstention(self.answer)


def _answers(value: object, where: str) -> list[str]:
    """`answer`: one string, or a list of acceptable answers with the preferred one first (SQuAD-style)."""
    if isinstance(value, list):
        if not value or not all(isinstance(a, str | int | float) and str(a).strip() for a in value):
            raise EvalDataError(f"{where}: 'answer' is a list, so it must hold non-empty strings; "
                                "give one answer or a list of acceptable ones")
        return [str(a) for a in value]
    if value is None or not str(value).strip():  # checked at validate too (adaptflow/preflight.py)
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
        items = [_item_from_row(row, f"{ev.data} line {n}") for n, row in read_eval_file(ev.data)]
        if not items:
            raise EvalDataError(f"{ev.data}: no rows; add {{\"question\", \"answer\"}} lines")
        return items
    if spec.behavior is None:
        raise EvalDataError("evaluation.data is missing and there is no behavior eval split; add evaluation.data")
    from components.training.data import load_examples, prompt_messages

    _, evals = load_examples(spec.behavior.data)
    return [
        EvalItem(prompt_messages(ex), prompt_messages(ex)[-1]["content"], ex.messages[-1]["content"], [])
        for ex in evals
    ]


def label_set(items: list[EvalItem]) -> set[str] | None:
    """Gold answers form a label set when they are few, short and repeated (classification-style)."""
    labels = {i.answer.strip().lower() for i in items if not i.unanswerable}
    if not labels:
        return None
    short = all(len(a.split()) <= 3 for a in labels)
    return labels if short and len(labels) <= 20 and len(labels) <= len(items) / 2 else None


def arms_for(route_behavior: bool, route_knowledge: bool, reader: bool = False) -> list[str]:
    """The arms to score; `evaluate` adds the gold-context arms where rows carry doc_ids."""
    arms = ["base"]
    if route_behavior:
        arms.append("adapter")
    if route_knowledge:
        arms.append("base+retrieval")
    if route_behavior and route_knowledge:
        arms.append("adapter+retrieval")
    if reader and route_knowledge and not route_behavior:
        arms.append("reader+retrieval")
    return arms


def arm_parts(arm: str) -> tuple[bool, str]:
    """'reader+retrieval' -> (uses the adapter, 'retrieval'); context is 'none', 'retrieval' or 'gold'."""
    if arm == GOLD:
        return False, "gold"
    model, _, context = arm.partition("+")
    return model in ADAPTER_MODELS, {"": "none", "retrieval": "retrieval", GOLD: "gold"}[context]


def ceiling_of(arm: str) -> str:
    """The gold-context arm of a retrieval arm: same model, gold documents instead of retrieved chunks."""
    model = arm.partition("+")[0]
    return GOLD if model == "base" else f"{model}+{GOLD}"


def gold_arms(arms: list[str]) -> list[str]:
    return [ceiling_of(a) for a in arms if arm_parts(a)[1] == "retrieval"]


def document_texts(retriever) -> dict[str, tuple[str, str]]:
    """doc_id -> (title, text) rebuilt from the index's chunks (in order, overlaps removed)."""
    by_doc: dict[str, list[dict]] = {}
    for row in retriever.rows.values():
        by_doc.setdefault(row["doc_id"], []).append(row)
    out = {}
    for doc_id, rows in by_doc.items():
        text, covered = "", 0
        for row in sorted(rows, key=lambda r: r["start"]):
            if row["end"] <= covered:
                continue
            piece = row["text"][max(0, covered - row["start"]):]
            text += (" " if text and row["start"] > covered else "") + piece
            covered = row["end"]
        out[doc_id] = (rows[0]["title"], text)
    return out


def gold_contexts(items: list[EvalItem], retriever) -> list[list[tuple[str, str]]]:
    """Each item's gold documents as context chunks (empty for rows without doc_ids)."""
    docs = document_texts(retriever)
    corpus = sorted(docs)
    return [[docs[d] for d in resolve_gold_ids(i.doc_ids, corpus)[0]] for i in items]


def held_out_keys(items: list[EvalItem], retriever, calibrating: bool = False) -> set[str]:
    """The question keys of the held-out half: the one the index tuned on (vectorstore.tune), or, when only the
    abstention is calibrated (components.evaluation.abstention), the same hash half of the rows with gold documents."""
    tuning = retriever.info.get("tuning") if retriever is not None else None
    if tuning:
        return set(tuning["held_out"])
    if calibrating:
        return {question_key(i.query) for i in items if i.doc_ids and is_held_out(i.query)}
    return set()


def evaluation_half(items: list[EvalItem], retriever, calibrating: bool = False) -> tuple[list[EvalItem], int]:
    """The items left when the index tuned its settings (or the abstention calibrated its threshold) on a
    held-out half: that half is left out here, so the choice never meets the questions it is judged on.
    Returns (items, left out)."""
    held = held_out_keys(items, retriever, calibrating)
    if not held:
        return items, 0
    kept = [i for i in items if question_key(i.query) not in held]
    return kept, len(items) - len(kept)


def abstain_mode(spec: TaskSpec, system) -> str:
    """'calibrated' or 'model': how the system's adapter (the reader) decides to say the abstain phrase.
    `auto` is the model's own text: calibrating on a tuned index's held-out third (some 20 questions) lowered
    contains-answer on the season corpus (0.241 -> 0.207, below base+retrieval) and left policy's unchanged
    (0.297), measured on the frozen corpora (docs/reading.md); `calibrated` stays for who asks for it."""
    knowledge = spec.knowledge
    if knowledge is None or system.retriever is None or getattr(system, "method", None) is None:
        if knowledge is not None and knowledge.abstain == "calibrated" and system.retriever is not None:
            raise EvalDataError("knowledge.abstain is 'calibrated' but no adapter reads the context (knowledge.reader "
                                "is none, or `auto` kept none); set knowledge.reader: builtin or knowledge.abstain: model")
        return "model"
    return "model" if knowledge.abstain == "auto" else knowledge.abstain


def calibrate_abstention(system, spec: TaskSpec, items: list[EvalItem]) -> dict:
    """Calibrate the system's abstention on the held-out half of `items` (the whole evaluation set), set it on
    `system` and return the record for the report; the evaluation half is never used."""
    from components.evaluation.abstention import Abstention, calibrate_system

    held = held_out_keys(items, system.retriever, calibrating=True)
    chosen = [i for i in items if question_key(i.query) in held and i.doc_ids and not i.unanswerable]
    if not chosen:
        where = spec.evaluation.data if spec.evaluation is not None else "the evaluation set"
        raise EvalDataError(f"knowledge.abstain is 'calibrated' but {where} has no held-out question with doc_ids to "
                            "calibrate on; add doc_ids to the rows or set knowledge.abstain: model")
    corpus = sorted(document_texts(system.retriever))
    record = calibrate_system(system, chosen, [resolve_gold_ids(i.doc_ids, corpus)[0] for i in chosen])
    system.abstention = Abstention.from_record(record)
    return record


def _score_row(item: EvalItem, pred: str, labels: set[str] | None) -> dict:
    row = {"prediction": pred, "answer": item.answer}
    if item.unanswerable:
        return row | {"abstain": abstained(pred)}
    golds = item.golds
    row |= {"exact_match": exact_match(pred, golds), "answer_f1": token_f1(pred, golds),
            "contains_answer": contains_answer(pred, golds)}
    if labels is not None:
        row["accuracy"] = label_accuracy(pred, item.answer, labels)
    return row


def score_arm(system, items: list[EvalItem], arm: str, labels: set[str] | None,
              on_batch: Callable[[int, int], None] | None = None,
              gold: list[list[tuple[str, str]]] | None = None) -> tuple[dict, list[dict]]:
    """Metrics and rows of one arm. A gold-context arm scores only the rows with gold documents (`gold`)."""
    use_adapter, context = arm_parts(arm)
    if context == "gold":
        keep = [n for n, chunks in enumerate(gold or []) if chunks]
        items, contexts, hits = [items[n] for n in keep], [gold[n] for n in keep], [[] for _ in keep]
    else:
        hits = [system.retrieve(i.query) for i in items] if context == "retrieval" else [[] for _ in items]
        contexts = [[(h.title, h.text) for h in hs] for hs in hits]
    prompts = [with_context(i.messages, c) for i, c in zip(items, contexts, strict=True)]
    preds = system.generate(prompts, use_adapter=use_adapter, on_batch=on_batch)
    rows = []
    for item, pred, hs in zip(items, preds, hits, strict=True):
        row = _score_row(item, pred, labels)
        if context == "retrieval":
            row["retrieved"] = [h.doc_id for h in hs]
            if item.doc_ids:  # per row, for the interval; the arm's means below are over the same rows
                one = retrieval_metrics([row["retrieved"]], [item.doc_ids], k=system.top_k)
                row |= {"hit_at_k": one["hit_at_k"], "mrr": one["mrr"]}
        if item.doc_ids:
            row["has_gold"] = True
        rows.append(row)
    metrics = aggregate([{k: float(r[k]) for k in (*ANSWER_METRICS, "abstain") if k in r} for r in rows])
    if context == "retrieval" and any(i.doc_ids for i in items):
        golds = [(i.doc_ids, [h.doc_id for h in hs]) for i, hs in zip(items, hits, strict=True) if i.doc_ids]
        rm = retrieval_metrics([g[1] for g in golds], [g[0] for g in golds], k=system.top_k)
        metrics |= {"hit_at_k": rm["hit_at_k"], "mrr": rm["mrr"]}
    return metrics, rows


def add_losses(report: dict, rows: dict[str, list[dict]]) -> None:
    """Per retrieval arm: retrieval_loss = gold-context - retrieved, reading_loss = 1 - gold-context,
    both in LOSS_METRIC over the rows that have gold documents; the gold arm carries its reading loss."""
    def on_gold(arm: str) -> float | None:
        # an evaluation set without doc_ids has no gold-context arm (found: compare on a knowledge spec)
        values = [r[LOSS_METRIC] for r in rows.get(arm, []) if r.get("has_gold") and LOSS_METRIC in r]
        return sum(values) / len(values) if values else None

    ceiling = {}
    for arm in [a for a in report["arms"] if arm_parts(a)[1] == "retrieval"]:
        top, got = on_gold(ceiling_of(arm)), on_gold(arm)
        if top is None or got is None:
            continue
        losses = {"retrieval_loss": round(top - got, 4), "reading_loss": round(1 - top, 4)}
        report["arms"][arm] |= losses
        report["arms"][ceiling_of(arm)] |= {"retrieval_loss": 0.0, "reading_loss": losses["reading_loss"]}
        ceiling[arm] = {"arm": ceiling_of(arm), "ceiling": round(top, 4), "score": round(got, 4), **losses}
    if ceiling:
        report["ceiling"] = {"metric": LOSS_METRIC, "rows": sum(bool(r.get("has_gold")) for r in next(iter(rows.values()))),
                             "arms": ceiling}


def leading_special_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text by default (Gemma's and Llama's <bos>; none for GPT-2
    or SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for cut in range(len(full) - len(plain) + 1):
        if full[cut:cut + len(plain)] == plain:
            return list(full[:cut])
    return []


def perplexity(model, tokenizer, text: str, window: int = 256) -> float:
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    # Every window starts the way the tokenizer starts a text (Gemma's <bos>): a model trained to always see its BOS
    # first scores nonsense without it. A tokenizer that adds nothing (SmolLM2, GPT-2) gets no prefix.
    head = leading_special_ids(tokenizer)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            text_ids = ids[start:start + window + 1]
            chunk = torch.cat([torch.tensor(head, dtype=ids.dtype), text_ids]).unsqueeze(0).to(model.device)
            # The loss from logits, not `labels=`: with labels, peft 0.21's AdaLoraModel.forward adds its orthogonal
            # regulariser, which fails on an adapter loaded for inference (no trainable_adapter_name).
            # A soft prompt (prompt learning, a hybrid's prompt part) prepends its virtual tokens' logits: keep the text's.
            logits = model(input_ids=chunk).logits[0, -text_ids.shape[0]:-1].float()
            n = text_ids.shape[0] - 1
            nll += float(torch.nn.functional.cross_entropy(logits, text_ids[1:].to(logits.device))) * n
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


def intervals_of(rows: list[dict]) -> dict[str, list[float]]:
    """The bootstrap 95 % interval of each per-row metric of one arm's rows (components.evaluation.metrics)."""
    out = {}
    for key in ROW_METRICS:
        values = [float(r[key]) for r in rows if key in r]
        if values:
            out[key] = list(bootstrap_interval(values))
    return out


def main_arm(arms: list[str], choice: dict | None = None) -> str:
    """The arm the system ships as: the last non-gold arm; with a reader choice (knowledge.reader: auto,
    `reader_choice`) that keeps no reader, base+retrieval."""
    candidates = [a for a in arms if arm_parts(a)[1] != "gold"]
    main = candidates[-1]
    if choice is not None and main.startswith("reader") and not choice["reader"]:
        return "base+retrieval"
    return main


def reader_choice(system, every: list[EvalItem], labels: set[str] | None, min_questions: int = TUNE_MIN) -> dict:
    """Whether `knowledge.reader: auto` ships the reader, decided by contains-answer (the share of answerable
    questions whose answer holds the gold one: what a knowledge user asks for), never on the evaluated questions.

    With a tuning split (the index tuned on a held-out third of at least `min_questions`): reader+retrieval against
    base+retrieval on those held-out answerable questions; the reader ships only when it answers more of them.
    Otherwise READER_RULE, measured across the frozen corpora (docs/reading.md)."""
    held = held_out_keys(every, system.retriever)
    chosen = [i for i in every if question_key(i.query) in held and not i.unanswerable]
    if len(chosen) < min_questions:
        why = ("no tuning split" if not held else
               f"{len(chosen)} held-out answerable questions, fewer than {min_questions}")
        return {"by": "rule", "reader": READER_RULE, "why": f"{why}: the rule measured across the frozen corpora"}
    scores = {}
    for arm in ("base+retrieval", "reader+retrieval"):
        metrics, _ = score_arm(system, chosen, arm, labels)
        scores[arm] = round(metrics.get(LOSS_METRIC, 0.0), 4)
    better = scores["reader+retrieval"] > scores["base+retrieval"]
    return {"by": "held-out", "questions": len(chosen), "metric": LOSS_METRIC, "scores": scores, "reader": better,
            "why": f"reader+retrieval {scores['reader+retrieval']:.3f} vs base+retrieval {scores['base+retrieval']:.3f} "
                   f"{LOSS_METRIC} on {len(chosen)} held-out questions"}


def evaluate(system, spec: TaskSpec, arms: list[str], out_dir: Path, train_record: dict | None = None,
             progress: Callable[[int, int], None] | None = None, reader_decides: bool = False,
             ceilings: bool = True) -> dict:
    """Run every arm (plus the gold-context ceilings unless `ceilings` is false), forgetting and latency; write
    report.json, report.md, loss.png; return the report.

    Progress shows on the terminal (one bar per arm) and goes to `progress(done, total)` over all arms.
    """
    every = load_eval_items(spec)
    mode = abstain_mode(spec, system)
    t0 = time.perf_counter()
    abstention = calibrate_abstention(system, spec, every) if mode == "calibrated" else None
    items, held_out = evaluation_half(every, system.retriever, calibrating=mode == "calibrated")
    labels = label_set(items)
    gold = None
    if ceilings and system.retriever is not None and any(i.doc_ids for i in items):
        gold = gold_contexts(items, system.retriever)
        arms = [*arms, *gold_arms(arms)]
    report: dict = {"arms": {}, "items": len(items), "label_set": sorted(labels) if labels else None,
                    "unanswerable": sum(i.unanswerable for i in items)}
    if held_out:
        report["held_out_for_tuning"] = held_out
    tuning = system.retriever.info.get("tuning") if system.retriever is not None else None
    if tuning:
        report["retrieval_tuning"] = {k: tuning[k] for k in ("tuned", "questions", "rule", "chosen", "grid")}
    skipped = system.retriever.info.get("tuning_skipped") if system.retriever is not None else None
    if skipped:
        report["tuning_skipped"] = skipped["skipped"]
    choice = reader_choice(system, every, labels) if reader_decides and "reader+retrieval" in arms else None
    if choice is not None:
        report["reader_choice"] = choice
    if abstention is not None:
        report["abstention"] = abstention
    if spec.knowledge is not None and spec.knowledge.reader_model is not None:  # issue 24: who wrote the answers
        report["reader_model"] = spec.knowledge.reader_model.id
    samples, rows_of = {}, {}
    sizes = [sum(bool(g) for g in gold) if arm_parts(a)[1] == "gold" else len(items) for a in arms]
    total, before = sum(sizes), 0
    for arm, size in zip(arms, sizes, strict=True):
        with tqdm(total=size, desc=f"evaluate {arm}", unit="item", dynamic_ncols=True) as bar:
            def on_batch(done: int, _total: int, before: int = before, bar=bar) -> None:
                bar.update(done - bar.n)
                if progress is not None:
                    progress(before + done, total)

            report["arms"][arm], rows_of[arm] = score_arm(system, items, arm, labels, on_batch, gold)
            report.setdefault("intervals", {})[arm] = intervals_of(rows_of[arm])
            bar.set_postfix({k: round(v, 3) for k, v in report["arms"][arm].items()})
        before += size
        samples[arm] = rows_of[arm][:5]
    add_losses(report, rows_of)
    main = main_arm(arms, choice)
    report["main_arm"] = main
    if any(a.startswith(ADAPTER_MODELS) for a in arms):
        report["forgetting"] = forgetting(system, _forgetting_text(spec))
    report["efficiency"] = _efficiency(train_record)
    report["timings"] = _timings(train_record) | query_latency(
        system, items, arm_parts(main)[0], arm_parts(main)[1] == "retrieval"
    )
    add_harness_forgetting(report, system, spec)  # evaluation.forgetting.harness (components.evaluation.harness)
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


def headline(metrics: dict) -> str:
    """The metric a report ranks by: accuracy for a label set; contains-answer where retrieval answers (what a
    knowledge user means by an answer), else answer_f1."""
    order = ("accuracy", "contains_answer", "answer_f1") if "hit_at_k" in metrics else ("accuracy", "answer_f1")
    return next(k for k in (*order, "contains_answer", "exact_match") if k in metrics)


def cell(report: dict, arm: str, key: str) -> str:
    """'0.600 [0.350, 0.800]': an arm's score with its bootstrap 95 % interval where it has one."""
    value = report["arms"][arm].get(key)
    if value is None:
        return "–"
    interval = (report.get("intervals") or {}).get(arm, {}).get(key)
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.3f}"


def straddles(interval: list[float] | None, threshold: float) -> bool:
    """True when a 95 % interval holds the gate's threshold: the point estimate decided, the data could not."""
    return bool(interval) and interval[0] <= threshold <= interval[1]


def render_markdown(report: dict, name: str) -> str:
    arms = report["arms"]
    present = {k for m in arms.values() for k in m}
    keys = [k for k in METRIC_ORDER if k in present]
    unanswerable = f" ({report['unanswerable']} unanswerable, scored by abstain)" if report.get("unanswerable") else ""
    tuned = report.get("held_out_for_tuning")
    why = " / ".join(w for w, on in (("tuned the index's chunking / top_k", report.get("retrieval_tuning")),
                                     ("calibrated the abstention", report.get("abstention"))) if on)
    tuned = f"; {tuned} more questions {why} and are left out" if tuned else ""
    lines = [f"# Evaluation of {name}", "", f"{report['items']} items{unanswerable}{tuned}, greedy decoding. "
             "Each score carries its bootstrap 95 % interval over the rows (2000 resamples).", ""]
    if report.get("tuning_skipped"):
        lines += [f"Retrieval settings not tuned: {report['tuning_skipped']}.", ""]
    if report.get("reader_model"):  # issue 24
        lines += [f"Every arm's answers are written by knowledge.reader_model {report['reader_model']}.", ""]
    lines += ["| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(cell(report, arm, k) for k in keys) + " |")
    head = headline(arms[report["main_arm"]])
    ranked = sorted([a for a in arms if arm_parts(a)[1] != "gold"], key=lambda a: arms[a].get(head, 0), reverse=True)
    best = ranked[0]
    margin = arms[best].get(head, 0) - (arms[ranked[1]].get(head, 0) if len(ranked) > 1 else 0)
    runner = f" by {margin:+.3f} over {ranked[1]}" if len(ranked) > 1 else ""
    lines += ["", f"**Winner on {head}: {best}**{runner}. Main arm (what ships): {report['main_arm']}."]
    if report.get("reader_choice"):
        c = report["reader_choice"]
        lines += ["", f"Reader ({'kept' if c['reader'] else 'left off'}, by {c['by']}): {c['why']}."]
    lines += ceiling_lines(report) + tuning_lines(report) + abstention_lines(report)
    if "forgetting" in report:
        f = report["forgetting"]
        lines.append(f"Forgetting: general-text perplexity {f['base_ppl']:.2f} -> {f['adapter_ppl']:.2f} ({f['forgetting']:+.1%}).")
    lines += harness_lines(report)  # evaluation.forgetting.harness: per task, base vs adapted ± stderr
    eff = report.get("efficiency", {})
    if eff:
        lines += ["", "| efficiency | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in eff.items()]
    return "\n".join(lines) + "\n"


def ceiling_lines(report: dict) -> list[str]:
    """The gold-context ceiling of each retrieval arm and how its gap splits."""
    ceiling = report.get("ceiling")
    if not ceiling:
        return []
    lines = ["", f"Ceiling ({ceiling['metric']} on the {ceiling['rows']} rows with gold documents): the same model "
             "and prompt given the gold documents instead of the retrieved chunks.", "",
             "| arm | score | gold-context ceiling | retrieval loss | reading loss |", "|---|---|---|---|---|"]
    for arm, c in ceiling["arms"].items():
        lines.append(f"| {arm} | {c['score']:.3f} | {c['ceiling']:.3f} ({c['arm']}) | {c['retrieval_loss']:+.3f} | "
                     f"{c['reading_loss']:.3f} |")
    return lines


def abstention_lines(report: dict) -> list[str]:
    a = report.get("abstention")
    if not a:
        return []
    limits = []
    if a["threshold"] is not None:
        limits.append(f"log P(phrase) - log P(answer) ({a.get('score', 'sum')} over the tokens) > {a['threshold']:+.3f}")
    if a.get("min_support") is not None:
        limits.append(f"the context's support of the answer < {a['min_support']:.3f}")
    rule = " or ".join(limits) if limits else "nothing more (the model's text alone scored best)"
    m = a["model_only"]
    return ["", f"Abstention calibrated on {a['questions']} held-out questions, each asked with the retrieved context "
            f"and with the gold documents removed: abstain when the reader says the phrase or {rule}; answered right "
            f"{a['answered_right']:.3f}, declined {a['declined']:.3f} (the model's text alone: {m['answered_right']:.3f}, "
            f"{m['declined']:.3f})."]


def tuning_lines(report: dict) -> list[str]:
    tuning = report.get("retrieval_tuning")
    if not tuning:
        return []
    c = tuning["chosen"]
    lines = ["", f"Retrieval settings measured at index time ({', '.join(tuning['tuned'])} unset in the spec) on "
             f"{tuning['questions']} held-out questions ({tuning['rule']}): chunking {c['chunking']['size']}/"
             f"{c['chunking']['overlap']} tokens, top_k {c['top_k']}.", "",
             "| chunk size | overlap | k | hit@k | recall@k | MRR |", "|---|---|---|---|---|---|"]
    return lines + [f"| {g['size']} | {g['overlap']} | {g['k']} | {g['hit_at_k']:.3f} | {g['recall_at_k']:.3f} | "
                    f"{g['mrr']:.3f} |" for g in tuning["grid"]]


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
