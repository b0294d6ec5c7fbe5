"""`knowledge.abstain: calibrated`: the reader's margin, its threshold from the held-out half only, and the served
system answering as the evaluation scored (tiny Llama, a real peft LoRA folder, a real FAISS index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptflow.system import System
from components.evaluation.abstention import Abstention, Support, calibrate, margins, response_logprobs, terms
from components.evaluation.arms import abstain_mode, evaluate, load_eval_items
from components.evaluation.metrics import abstained
from components.models.prompting import (
    ABSTAIN_PHRASE,
    last_user_text,
    question_messages,
    split_context,
    with_context,
)
from components.spec import TaskSpec
from components.spec.evalset import EvalDataError, is_held_out, question_key

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = {
    "harbor.md": "# Harbor\n\nThe Pellin harbor opened in 1871 and has nine piers. Its light is red.\n",
    "mill.md": "# Mill\n\nThe Copper mill ground wheat until 1952, when a flood broke its wheel.\n",
    "choir.md": "# Choir\n\nRuth Adeyemi founded the Saltmarsh choir in 1994. It sings on Sundays.\n",
    "ferry.md": "# Ferry\n\nThe Holm ferry leaves at seven and crosses in forty minutes.\n",
}
QUESTIONS = [
    ("When did the Pellin harbor open?", "1871", "harbor.md"),
    ("How many piers has the Pellin harbor?", "nine", "harbor.md"),
    ("What colour is the harbor light?", "red", "harbor.md"),
    ("Until when did the Copper mill grind wheat?", "1952", "mill.md"),
    ("What broke the mill's wheel?", "a flood", "mill.md"),
    ("Who founded the Saltmarsh choir?", "Ruth Adeyemi", "choir.md"),
    ("When does the Saltmarsh choir sing?", "on Sundays", "choir.md"),
    ("When does the Holm ferry leave?", "at seven", "ferry.md"),
    ("How long is the ferry crossing?", "forty minutes", "ferry.md"),
]


def test_the_threshold_maximizes_the_balanced_rate_and_ties_keep_the_model():
    # answerable: (margin, said the phrase, answered right); declinable: (margin, said the phrase)
    record = calibrate([(-5.0, False, True), (-4.0, False, True), (-1.0, False, False)],
                       [(-0.5, False), (-3.0, False), (0.0, True)])
    assert record["threshold"] == -3.5  # declines all three, keeps both right answers
    assert (record["answered_right"], record["declined"]) == (round(2 / 3, 4), 1.0)
    assert record["model_only"]["declined"] == round(1 / 3, 4)
    tie = calibrate([(-5.0, False, True)], [(-9.0, False)])  # declining -9 would cost the right answer at -5
    assert tie["threshold"] is None and tie["balanced"] == tie["model_only"]["balanced"]


def test_the_decision_only_adds_abstentions():
    calibrated = Abstention(threshold=-2.0)
    assert calibrated.decide("1871", -1.0) == ABSTAIN_PHRASE
    assert calibrated.decide("1871", -3.0) == "1871"
    assert calibrated.decide("Not in the documents.", -9.0) == "Not in the documents."  # the model's own says stay
    assert Abstention().decide("1871", 5.0) == "1871"  # model mode: the text alone
    assert Abstention.from_record({"mode": "calibrated", "threshold": -2.0}) == calibrated
    assert Abstention.from_record({"mode": "calibrated", "threshold": -2.0, "score": "mean"}).score == "mean"
    assert Abstention.from_record(None) == Abstention()


def test_support_is_the_question_the_context_around_the_answer_speaks_to():
    chunks = [(name.removesuffix(".md").title(), text) for name, text in DOCS.items()]
    support = Support([f"{title}\n{text}" for title, text in chunks])
    assert terms("What colour is the harbor light?") == {"colour", "harbor", "light"}
    assert terms("How many piers opened?") == {"pier", "open"}  # question frames and stop words out, stemmed
    # the answer's own sentence carries every question term: full support
    assert support.score("When did the Pellin harbor open?", "1871", chunks) == pytest.approx(1.0)
    # a span from a sentence about something else: the question's terms are not around it
    wrong = support.score("When did the Pellin harbor open?", "1952", chunks)
    assert wrong < 0.2
    # an on-topic span for a question the documents never answer: "mayor" is in no chunk, so it weighs most
    mayor = support.score("Who is the mayor of Pellin?", "nine", chunks)
    assert 0 < mayor < 0.5
    assert support.idf("mayor") > support.idf("harbor") > 0
    # words the context does not hold: no support; the previous sentence and the title count ("Its light")
    assert support.score("When did the Pellin harbor open?", "1066", chunks) == 0.0
    idf = {w: support.idf(w) for w in ("colour", "harbor", "light")}  # "colour" is in no chunk: it weighs most
    assert support.score("What colour is the harbor light?", "red", chunks) == pytest.approx(
        (idf["harbor"] + idf["light"]) / sum(idf.values()))  # "harbor" from the sentence before and the title
    assert support.score("What colour is the harbor light?", "red", [("Notes", "Its light is red.")]) == pytest.approx(
        idf["light"] / sum(idf.values()))
    # the served path reads the same numbers from the prompt the model saw
    text = last_user_text(with_context(question_messages("When did the Pellin harbor open?"), chunks))
    assert split_context(text) == ([(t, " ".join(x.split())) for t, x in chunks], "When did the Pellin harbor open?")
    assert support.of_prompt(text, "1871") == pytest.approx(1.0)
    assert support.of_prompt("When did the Pellin harbor open?", "1871") is None  # no context: no support rule


def test_margin_and_support_are_calibrated_together_and_ties_use_fewer_limits():
    # answerable: (margin, said, right, support); declinable: (margin, said, support). The margins do not separate
    # the two kinds; the supports do.
    answerable = [(-2.0, False, True, 0.9), (-1.0, False, True, 0.8), (-3.0, False, False, 0.1)]
    declinable = [(-2.5, False, 0.2), (-1.5, False, 0.05), (0.0, True, 0.0)]
    record = calibrate(answerable, declinable)
    assert record["threshold"] is None and record["min_support"] == 0.5  # the support alone: one limit suffices
    assert (record["answered_right"], record["declined"]) == (round(2 / 3, 4), 1.0)
    assert calibrate(answerable, [(-2.5, False), (-1.5, False)])["min_support"] is None  # no supports: margin only
    rule = Abstention(threshold=None, min_support=0.5)
    assert rule.calibrated and not Abstention().calibrated
    assert rule.decide("1952", -9.0, 0.2) == ABSTAIN_PHRASE and rule.decide("1871", 9.0, 0.9) == "1871"
    assert rule.decide("1952", -9.0, None) == "1952"  # no context to check: the model's text
    assert Abstention.from_record({"mode": "calibrated", "threshold": None, "min_support": 0.5}) == rule


def test_response_logprobs_are_the_sequence_probability_batched_or_not(tiny_llama_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    prompts = ["Context: the harbor opened in 1871.\nQuestion: when?\n", "Hi"]
    responses = ["1871", ABSTAIN_PHRASE]
    batched = response_logprobs(model, tokenizer, prompts, responses)
    for prompt, response, got in zip(prompts, responses, batched, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0].float(), -1)
        expected = sum(float(logp[len(p) + i - 1, t]) for i, t in enumerate(r))
        assert got == pytest.approx(expected, abs=1e-3)  # left padding in the batch changes nothing
    assert response_logprobs(model, tokenizer, [tokenizer(prompts[0], add_special_tokens=False)["input_ids"]],
                             responses[:1]) == pytest.approx(batched[:1], abs=1e-4)  # token ids or text
    mean = response_logprobs(model, tokenizer, prompts[:1], responses[:1], score="mean")[0]
    n = len(tokenizer(responses[0], add_special_tokens=False)["input_ids"]) + 1
    assert mean == pytest.approx(batched[0] / n, abs=1e-4)
    said = margins(model, tokenizer, prompts, ["1871", "Not in the documents"])
    phrase = response_logprobs(model, tokenizer, prompts[:1], [ABSTAIN_PHRASE])[0]
    assert said[0] == pytest.approx(phrase - batched[0], abs=1e-3) and said[1] == 0.0  # said it: no margin needed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir, tiny_embedder_dir):
    """Documents, an evaluation set with both halves non-empty, a FAISS index and a random (non-zero) LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM


    root = tmp_path_factory.mktemp("abstain")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    rows = [{"question": q, "answer": a, "doc_ids": [d]} for q, a, d in QUESTIONS]
    rows += [{"question": "Who is the mayor of Pellin?", "answer": ABSTAIN_PHRASE}]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert 0 < sum(is_held_out(q) for q, _, _ in QUESTIONS) < len(QUESTIONS)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(root / "reader")
    return root


def spec_for(root: Path, model_dir, embedder_dir, abstain: str) -> TaskSpec:
    return TaskSpec.model_validate({
        "name": "tiny-abstain", "goal": "knowledge", "base_model": {"id": str(model_dir)},
        "knowledge": {"documents": str(root / "docs"), "chunking": {"size": 16, "overlap": 4},
                      "embedder": str(embedder_dir), "top_k": 1, "reader": "builtin", "abstain": abstain},
        "evaluation": {"data": str(root / "qa.jsonl"), "max_new_tokens": 4},
    })


def test_calibrated_on_the_held_out_half_and_served_as_evaluated(workspace, tiny_llama_dir, tiny_embedder_dir,
                                                                 tmp_path):
    from vectorstore import build_index

    spec = spec_for(workspace, tiny_llama_dir, tiny_embedder_dir, "calibrated")
    build_index(spec.knowledge, tmp_path / "index", cache_dir=tmp_path / "cache")
    system = System("tiny-abstain@candidate", spec, workspace / "reader", tmp_path / "index")
    assert abstain_mode(spec, system) == "calibrated"
    report = evaluate(system, spec, ["base", "base+retrieval", "reader+retrieval"], tmp_path / "eval")
    record = report["abstention"]
    held = [q for q, _, _ in QUESTIONS if is_held_out(q)]
    assert record["mode"] == "calibrated" and record["questions"] == len(held)
    assert record["score"] in ("sum", "mean") and set(record["tried"]) == {"sum", "mean"}
    assert report["held_out_for_tuning"] == len(held)  # the calibration half is left out of the scores
    assert report["items"] == len(QUESTIONS) - len(held) + 1
    assert "Abstention calibrated on" in (tmp_path / "eval" / "report.md").read_text()
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())["abstention"]
    assert Abstention.from_record(saved) == system.abstention

    # the served system gives the evaluation's answers: query and chat (stream) apply the same rule
    evaluated_items = [i for i in load_eval_items(spec) if question_key(i.query) not in {question_key(q) for q in held}]
    prompts = [with_context(i.messages, [(h.title, h.text) for h in system.retrieve(i.query)]) for i in evaluated_items]
    for threshold in (record["threshold"], -1e9, 1e9):
        system.abstention = Abstention.from_record(record | {"threshold": threshold})
        scored = [system.generate([p], use_adapter=True)[0] for p in prompts]
        for item, expected in zip(evaluated_items, scored, strict=True):
            assert system.query(messages=item.messages).answer == expected
            assert "".join(system.stream(messages=item.messages)) == expected
        if threshold == -1e9:
            assert all(abstained(s) for s in scored)  # every answer declined
            # the base model is not the reader: its text alone
            assert system.query(messages=evaluated_items[0].messages, use_adapter=False).answer == system.generate(
                prompts[:1], use_adapter=False)[0]


def test_auto_is_the_models_own_text_even_on_a_tuned_index_and_calibrated_needs_a_reader(
        workspace, tiny_llama_dir, tiny_embedder_dir, tmp_path):
    from vectorstore import build_index

    spec = spec_for(workspace, tiny_llama_dir, tiny_embedder_dir, "auto")
    build_index(spec.knowledge, tmp_path / "index", cache_dir=tmp_path / "cache")
    reader = System("a@candidate", spec, workspace / "reader", tmp_path / "index")
    assert abstain_mode(spec, reader) == "model"
    reader.retriever.info["tuning"] = {"tuned": True}  # as a tuned index records it: still the model's own text
    assert abstain_mode(spec, reader) == "model"
    fixed = spec_for(workspace, tiny_llama_dir, tiny_embedder_dir, "calibrated")
    bare = System("b@candidate", fixed, None, tmp_path / "index")
    with pytest.raises(EvalDataError, match="knowledge.abstain is 'calibrated' but no adapter reads"):
        abstain_mode(fixed, bare)
    with pytest.raises(ValueError, match="abstain"):
        TaskSpec.model_validate({**fixed.model_dump(mode="json"),
                                 "knowledge": {**fixed.knowledge.model_dump(mode="json"), "abstain": "sometimes"}})
    with pytest.raises(ValueError, match="knowledge.reader is 'none'"):
        spec_for(workspace, tiny_llama_dir, tiny_embedder_dir, "calibrated").model_validate(
            {**fixed.model_dump(mode="json"), "knowledge": {**fixed.knowledge.model_dump(mode="json"), "reader": "none"}})


def test_calibration_never_trades_a_right_answer_for_declines():
    from components.evaluation.abstention import calibrate

    # (margin, said the phrase, answered right, support); declinable: (margin, said, support)
    answerable = [(0.8, False, True, None), (0.2, False, False, None)]
    declinable = [(0.9, False, None), (0.7, False, None), (0.6, False, None)]
    # unconstrained, threshold 0.45 would be best (answered 0.0, declined 1.0: balanced 0.5) and cost the right answer
    record = calibrate(answerable, declinable)
    assert record["answered_right"] == record["model_only"]["answered_right"] == 0.5
    assert record["threshold"] == 0.85 and record["declined"] == round(1 / 3, 4)
