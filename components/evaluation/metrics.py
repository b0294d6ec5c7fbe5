"""Answer-quality metrics: pure functions over strings and numbers, no models involved.

Text metrics follow the SQuAD evaluation script (v2.0 `normalize_answer`, `compute_exact`,
`compute_f1`) so numbers are comparable with published ones. Each per-row metric returns a
float in [0, 1]; `gold` may be one answer or several acceptable ones (the best match counts).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from components.evaluation.gates import GateResult, evaluate_gates
from components.models.prompting import ABSTAIN_PHRASE

__all__ = [
    "GateResult", "abstained", "aggregate", "contains_answer", "evaluate_gates", "exact_match", "is_abstention",
    "bootstrap_interval", "label_accuracy", "normalize_answer", "percentile", "token_f1",
]

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
Gold = str | Sequence[str]


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles (a, an, the), collapse whitespace (SQuAD order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: Gold) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("gold answers are empty; give at least one reference answer per row")
    return golds


def exact_match(pred: str, gold: Gold) -> float:
    return max(float(normalize_answer(pred) == normalize_answer(g)) for g in _golds(gold))


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)  # SQuAD v2: an empty answer is right only when the gold is empty too
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, gold: Gold) -> float:
    """Bag-of-tokens F1 between normalized prediction and gold."""
    return max(_f1(pred, g) for g in _golds(gold))


def _contains(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not g:
        return float(not p)
    # pad with spaces so "cat" does not match inside "concatenate"
    return float(f" {g} " in f" {p} ")


def contains_answer(pred: str, gold: Gold) -> float:
    """1.0 when the normalized gold appears as whole words inside the normalized prediction.

    Chatty models wrap correct answers in sentences; exact match would score those 0.
    """
    return max(_contains(pred, g) for g in _golds(gold))


def is_abstention(gold: str) -> bool:
    """An evaluation row whose answer is the abstain phrase is unanswerable from the documents."""
    return normalize_answer(gold) == normalize_answer(ABSTAIN_PHRASE)


def abstained(pred: str) -> float:
    """1.0 when the prediction says the abstain phrase ("Not in the documents." counts; so does a
    sentence around it). The `abstain` metric is its mean over the unanswerable rows."""
    return _contains(pred, ABSTAIN_PHRASE)


def _label_tokens(text: str) -> list[str]:
    # Lighter than normalize_answer: keep inner '-' and '_' so labels like "not-spam" survive.
    return [tok.strip(string.punctuation) for tok in text.lower().split() if tok.strip(string.punctuation)]


def first_label(pred: str, labels: Iterable[str] | None = None) -> str | None:
    """The first label in `pred` (multi-word labels allowed, longest wins at a position);
    without `labels`, simply the first word."""
    tokens = _label_tokens(pred)
    if labels is None:
        return tokens[0] if tokens else None
    options = sorted({tuple(_label_tokens(label)) for label in labels if _label_tokens(label)}, key=len, reverse=True)
    for i in range(len(tokens)):
        for option in options:
            if tuple(tokens[i : i + len(option)]) == option:
                return " ".join(option)
    return None


def label_accuracy(pred: str, gold: str, labels: set[str] | None = None) -> float:
    """1.0 when the first label word of the prediction is the gold label (classification tasks).

    With `labels`, words that are not labels are skipped ("The answer is Billing." -> billing);
    without, the prediction's first word must be the label.
    """
    found = first_label(pred, labels)
    return float(found is not None and found == " ".join(_label_tokens(gold)))


def aggregate(rows: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """Per-key means over rows; None and non-numeric values are skipped (bools count as 0/1).

    A key missing from some rows is averaged over the rows that have it, so a metric measured
    only on retrieval rows (hit_at_k) is not diluted by rows where it does not apply.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, bool | int | float) and not (isinstance(value, float) and math.isnan(value)):
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values; measure at least one (e.g. one latency) first")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} is outside 0..100; use e.g. 50 for the median, 95 for p95")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean of per-row scores (Efron & Tibshirani 1993, ch. 13).

    `resamples` times, draw len(values) rows with replacement (Python's `random.Random(seed)`, one
    `randrange(n)` per draw, resample after resample) and take the mean; the interval is the
    (1-level)/2 and (1+level)/2 percentiles of those means (`percentile`, linear interpolation). Seeded, so
    the same rows give the same interval on every machine and a report's bytes stay reproducible. None for
    no rows. On 10 rows of 0/1 scores a 95 % interval is about +-0.3: the reason every score carries one.
    """
    import random

    n = len(values)
    if n == 0:
        return None
    if not 0 < level < 1:
        raise ValueError(f"interval level {level} is outside (0, 1); use e.g. 0.95")
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        total = 0.0
        for _ in range(n):
            total += values[rng.randrange(n)]
        means.append(total / n)
    tail = (1 - level) / 2 * 100
    return round(percentile(means, tail), 4), round(percentile(means, 100 - tail), 4)
