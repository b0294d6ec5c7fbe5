"""components.evaluation.arms: evaluation rows with several acceptable answers, and batched generation order."""

from __future__ import annotations

import json

import pytest

from adaptflow.system import generate_texts
from components.evaluation.arms import EvalDataError, load_eval_items
from components.evaluation.metrics import contains_answer, exact_match
from components.spec import TaskSpec
from tests.conftest import make_tiny_llama


def knowledge_spec(tmp_path, rows: list) -> TaskSpec:
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return TaskSpec.model_validate(
        {"name": "k", "goal": "knowledge", "knowledge": {"documents": "docs/"},
         "evaluation": {"data": str(tmp_path / "qa.jsonl")}},
        context={"check_exists": False},
    )


def test_answer_may_list_acceptable_answers_and_every_metric_takes_the_best(tmp_path):
    spec = knowledge_spec(tmp_path, [
        {"question": "How tall is the lighthouse?", "answer": ["47 metres", "47 meters", "47 m"]},
        {"question": "Who founded it?", "answer": "Ilse Marrow-Kade"},
    ])
    first, second = load_eval_items(spec)
    assert first.answer == "47 metres" and first.golds == ["47 metres", "47 meters", "47 m"]
    assert second.golds == ["Ilse Marrow-Kade"]

    assert contains_answer("It is 47 meters tall.", first.golds) == 1.0
    assert exact_match("47 m", first.golds) == 1.0 and exact_match("47 metres tall", first.golds) == 0.0
    assert contains_answer("It is 47 meters tall.", first.answer) == 0.0  # what a single answer would score


@pytest.mark.parametrize("answer", [[], ["ok", ""], [None]])
def test_a_bad_answer_list_names_the_line_and_the_fix(tmp_path, answer):
    spec = knowledge_spec(tmp_path, [{"question": "q", "answer": "a"}, {"question": "q", "answer": answer}])
    with pytest.raises(EvalDataError, match=r"qa.jsonl line 2: 'answer' is a list, so it must hold non-empty strings"):
        load_eval_items(spec)


def test_generation_batched_by_length_returns_answers_in_prompt_order(tokenizer):
    model = make_tiny_llama(tokenizer)
    prompts = ["short", "a much longer prompt " * 12, "mid length prompt here", "x " * 30, "tiny"]
    calls = []
    batched = generate_texts(model, tokenizer, prompts, max_new_tokens=4, batch_size=1,
                             on_batch=lambda done, total: calls.append((done, total)))
    one_by_one = [generate_texts(model, tokenizer, [p], max_new_tokens=4, batch_size=1)[0] for p in prompts]
    assert batched == one_by_one
    assert calls == [(n, 5) for n in range(1, 6)]
    two = []
    generate_texts(model, tokenizer, prompts, max_new_tokens=2, batch_size=2, on_batch=lambda d, t: two.append(d))
    assert two == [2, 4, 5]


def test_losses_without_gold_documents_are_left_out():
    """An evaluation set without doc_ids: retrieval arms but no gold-context arm, so no losses and no ceiling."""
    from components.evaluation.arms import add_losses

    report = {"arms": {"base": {"contains_answer": 0.0}, "base+retrieval": {"contains_answer": 0.5}}}
    rows = {"base": [{"contains_answer": 0.0}], "base+retrieval": [{"contains_answer": 1.0}]}
    add_losses(report, rows)
    assert report == {"arms": {"base": {"contains_answer": 0.0}, "base+retrieval": {"contains_answer": 0.5}}}
