"""Answer metrics and gates against hand-computed values (SQuAD script semantics)."""

from __future__ import annotations

import pytest

from components.evaluation.gates import describe_gate
from components.evaluation.metrics import (
    aggregate,
    contains_answer,
    evaluate_gates,
    exact_match,
    label_accuracy,
    normalize_answer,
    percentile,
    token_f1,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("An apple a day", "apple day"),
    ("theory of the atom", "theory of atom"),  # articles only as whole words
    ("  U.S.A.\n", "usa"),
    ("", ""),
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match() -> None:
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("The Eiffel Tower", "Eiffel tower!") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("Lutetia", ["Paris", "lutetia"]) == 1.0
    with pytest.raises(ValueError, match="gold answers are empty"):
        exact_match("x", [])


def test_token_f1_pinned() -> None:
    # pred tokens {cat, sat, on, mat}, gold {cat, on, mat}: P=3/4, R=1, F1=6/7
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # shared tokens count by multiplicity: min(go 2, 1) + min(stop 1, 2) = 2 of 3 each side
    assert token_f1("go go stop", "go stop stop") == pytest.approx(2 / 3)
    assert token_f1("nothing shared", "totally different") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("blue", ["red", "blue sky"]) == pytest.approx(2 / 3)


def test_contains_answer_is_whole_words() -> None:
    assert contains_answer("I think the answer is Paris, France.", "paris") == 1.0
    assert contains_answer("We concatenate strings", "cat") == 0.0
    assert contains_answer("Reset it in Settings > Account", "settings account") == 1.0
    assert contains_answer("no idea", ["Paris", "idea"]) == 1.0


def test_label_accuracy() -> None:
    labels = {"billing", "technical", "not-spam", "account access"}
    assert label_accuracy("Billing", "billing") == 1.0
    assert label_accuracy("The answer is Billing.", "billing") == 0.0  # no label set: first word must match
    assert label_accuracy("The answer is Billing.", "billing", labels) == 1.0
    assert label_accuracy("technical, not billing", "billing", labels) == 0.0  # the first label counts
    assert label_accuracy("Category: not-spam", "not-spam", labels) == 1.0
    assert label_accuracy("It is an account access problem", "Account Access", labels) == 1.0
    assert label_accuracy("no idea", "billing", labels) == 0.0
    assert label_accuracy("", "billing") == 0.0


def test_aggregate_means_per_key() -> None:
    rows = [{"f1": 1.0, "em": True, "hit": 1}, {"f1": 0.5, "em": False, "hit": None}, {"f1": 0.0, "note": "x"}]
    assert aggregate(rows) == {"f1": 0.5, "em": 0.5, "hit": 1.0}
    assert aggregate([]) == {}


def test_percentile_matches_linear_interpolation() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert [percentile(values, q) for q in (0, 50, 95, 100)] == pytest.approx([1.0, 2.5, 3.85, 4.0])
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside 0..100"):
        percentile([1.0], 101)


def test_gates_pass_fail_and_missing_metric() -> None:
    gates = {"answer_f1": ">= 0.5", "forgetting": "<= 0.15", "exact_match": "== 0.3"}
    result = evaluate_gates(gates, {"answer_f1": 0.5, "forgetting": 0.2, "exact_match": 0.1 + 0.2})
    assert [r["passed"] for r in result.results] == [True, False, True]
    assert result.passed is False
    assert result.results[1]["reason"] == "forgetting = 0.2, needs <= 0.15"

    missing = evaluate_gates({"answer_f1": ">= 0.5", "mrr": "> 0.2"}, {"answer_f1": 0.9})
    assert missing.passed is False
    row = missing.results[1]
    assert (row["metric"], row["op"], row["threshold"], row["value"], row["passed"]) == ("mrr", ">", 0.2, None, False)
    assert "metric 'mrr' was not measured" in row["reason"] and "measured: answer_f1" in row["reason"]
    assert describe_gate(row) == "mrr missing > 0.2: FAIL"
    assert evaluate_gates({"mrr": "> 0.2"}, {"mrr": None}).passed is False
    assert evaluate_gates({"mrr": "> 0.2"}, {"mrr": float("nan")}).passed is False

    assert evaluate_gates({}, {}).to_dict() == {"passed": True, "results": []}
    assert result.to_dict()["results"][0] == {
        "metric": "answer_f1", "op": ">=", "threshold": 0.5, "value": 0.5, "passed": True, "reason": None}
    assert result.summary() == "answer_f1 0.5 >= 0.5: pass; forgetting 0.2 <= 0.15: FAIL; exact_match 0.3 == 0.3: pass"
    with pytest.raises(ValueError, match=r"evaluation.gates.answer_f1: gate 'about 0.5'"):
        evaluate_gates({"answer_f1": "about 0.5"}, {"answer_f1": 0.5})


def test_bootstrap_interval_is_the_percentile_bootstrap_computed_by_hand():
    import random

    import numpy as np

    from components.evaluation.metrics import bootstrap_interval

    values = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1]
    rng = random.Random(7)  # by hand: 500 resamples of 12 draws, the mean of each, numpy's percentiles
    means = [sum(values[rng.randrange(len(values))] for _ in values) / len(values) for _ in range(500)]
    low, high = np.percentile(means, [2.5, 97.5])
    assert bootstrap_interval(values, resamples=500, seed=7) == (round(low, 4), round(high, 4))
    # the same rows give the same interval (a report's bytes are reproducible); another seed moves it a little
    assert bootstrap_interval(values) == bootstrap_interval(list(values))
    # exact, by enumerating every resample of three rows [0, 1, 1]: P(mean = 0) = 1/27 > 2.5 % and
    # P(mean = 1) = 8/27 > 2.5 %, so the 95 % interval is the whole range
    assert bootstrap_interval([0, 1, 1]) == (0.0, 1.0)
    # 20 right of 40: the normal approximation's +-1.96 * 0.5 / sqrt(40) = +-0.155 around 0.5
    low, high = bootstrap_interval([1] * 20 + [0] * 20)
    assert abs(low - 0.345) < 0.03 and abs(high - 0.655) < 0.03
    # one row in ten moves a score by 0.1, and the interval of 6 / 10 is about +-0.3 wide
    low, high = bootstrap_interval([1] * 6 + [0] * 4)
    assert 0.5 < high - low < 0.7
    assert bootstrap_interval([]) is None and bootstrap_interval([1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1, 0], level=95)
