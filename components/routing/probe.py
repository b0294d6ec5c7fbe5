"""Routing that measures (`goal: auto` with an evaluation set): the base model answers a sample of the
evaluation items without context, with retrieval, and with the gold documents as context; the route follows
from the numbers (docs/routing.md).

- the index is added when retrieval (or gold context) raises contains-answer by at least MARGIN over no
  context: the base lacks facts that the documents supply;
- the adapter is added when, even with the best context available, the strict score (label accuracy, else
  exact match) stays under FORMAT_OK: the base does not answer in the task's form;
- only halves the spec declares can be added (no training data, no adapter); neither is a valid outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.routing.route import Route
from components.spec import TaskSpec

PROBE_ITEMS = 16
MARGIN = 0.15  # one item in 16 is 0.06: a gain of 0.15 is at least three items
FORMAT_OK = 0.5
GOLD_SEARCH = 4  # gold chunks are picked from this many times top_k retrieved chunks, else by position


@dataclass(frozen=True)
class Evidence:
    items: int
    strict_metric: str  # accuracy (a label set) or exact_match
    arms: dict[str, dict[str, float]]  # arm -> {strict metric, contains_answer}

    def to_dict(self) -> dict:
        return {"items": self.items, "strict_metric": self.strict_metric, "arms": self.arms,
                "thresholds": {"margin": MARGIN, "format_ok": FORMAT_OK}}


def sample(items: list, n: int = PROBE_ITEMS) -> list:
    """Evenly spaced items (deterministic, and not only the first topic of a sorted file)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def gold_hits(retriever, item, k: int) -> list:
    """The gold documents' chunks as context: those retrieval ranks highest, else the first ones."""
    from components.spec.evalset import resolve_gold_ids

    docs = sorted({r["doc_id"] for r in retriever.rows.values()})
    gold, _ = resolve_gold_ids(list(item.doc_ids), docs)
    ranked = [h for h in retriever.search(item.query, GOLD_SEARCH * k) if h.doc_id in gold]
    if ranked:
        return ranked[:k]
    rows = sorted((r for r in retriever.rows.values() if r["doc_id"] in gold), key=lambda r: (r["doc_id"], r["position"]))
    return [retriever._hit(r["id"], 1.0) for r in rows[:k]]


def measure(system, spec: TaskSpec, items: list) -> Evidence:
    """Score the base (adapter off) on `items` with no context, retrieval, and gold context where possible."""
    from components.evaluation.arms import label_set
    from components.evaluation.metrics import contains_answer, exact_match, label_accuracy
    from components.models.prompting import with_context

    labels = label_set(items)
    strict = "accuracy" if labels is not None else "exact_match"
    contexts = {"base": lambda item: []}
    if system.retriever is not None:
        contexts["base+retrieval"] = lambda item: system.retrieve(item.query)
        if any(i.doc_ids for i in items):
            contexts["base+gold"] = lambda item: gold_hits(system.retriever, item, system.top_k) if item.doc_ids else []
    arms = {}
    for arm, context in contexts.items():
        prompts = [with_context(i.messages, [(h.title, h.text) for h in context(i)]) for i in items]
        preds = system.generate(prompts, use_adapter=False)
        scores = [label_accuracy(p, i.answer, labels) if labels is not None else exact_match(p, i.golds)
                  for p, i in zip(preds, items, strict=True)]
        found = [contains_answer(p, i.golds) for p, i in zip(preds, items, strict=True)]
        arms[arm] = {strict: round(sum(map(float, scores)) / len(items), 4),
                     "contains_answer": round(sum(map(float, found)) / len(items), 4)}
    return Evidence(len(items), strict, arms)


def decide(spec: TaskSpec, ev: Evidence) -> Route:
    """The route from the evidence, each reason quoting the numbers it rests on."""
    arms, s = ev.arms, ev.strict_metric
    best_ctx = next(a for a in ("base+gold", "base+retrieval", "base") if a in arms)
    reasons = [f"probe: base model on {ev.items} evaluation items: " + "; ".join(
        f"{arm} {s} {m[s]:.2f}, contains-answer {m['contains_answer']:.2f}" for arm, m in arms.items())]
    knowledge = False
    if spec.knowledge is not None:
        with_docs = max(arms.get("base+retrieval", {}).get("contains_answer", 0.0),
                        arms.get("base+gold", {}).get("contains_answer", 0.0))
        gain = with_docs - arms["base"]["contains_answer"]
        knowledge = gain >= MARGIN
        reasons.append(f"index {'added' if knowledge else 'not needed'}: the documents raise contains-answer by "
                       f"{gain:+.2f} (threshold {MARGIN})")
    behavior = False
    if spec.behavior is not None:
        score = arms[best_ctx][s]
        behavior = score < FORMAT_OK
        reasons.append(f"adapter {'added' if behavior else 'not needed'}: with {best_ctx} context the base scores "
                       f"{s} {score:.2f} ({'below' if behavior else 'at or above'} {FORMAT_OK}): "
                       + ("it does not answer in the task's form" if behavior else "it already answers in the task's form"))
    return Route(behavior, knowledge, reasons)
