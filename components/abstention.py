"""Saying "not in the documents" by measurement, not only by the model's greedy text (`knowledge.abstain`).

A small reader rarely writes the abstain phrase when the context is about the right subject but silent on the
question: its greedy answer is some span of the context. Selective prediction asks the model itself how close
the two responses are: the **margin** of a prompt is

    log P(ABSTAIN_PHRASE <end> | prompt) - log P(answer <end> | prompt)

(`answer` the greedy answer; both are whole-sequence log-probabilities under the model that answered). The
system abstains when the model's answer says the phrase, or when the margin is above a threshold.

The threshold is **calibrated on the held-out half** of the evaluation questions, the half the index tuning
already measures on (vectorstore.tune) and the evaluation leaves out, so it never sees the questions it is
judged on. Each held-out question with gold documents is asked twice:

- with what retrieval returns: it should be answered (it counts when the answer contains the gold answer);
- with the gold documents' chunks removed from the retrieved ones: the context lacks the answer, it should
  abstain.

The threshold maximizes the mean of the two rates (answered right, abstained right): equal weight, since the
share of unanswerable questions a user will ask is unknown. Ties keep the higher threshold (fewer answers
replaced). The result is recorded in the evaluation report (`abstention`), and the served system
(adaptflow.system) answers with the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.metrics import abstained, contains_answer
from components.prompting import ABSTAIN_PHRASE, with_context

MODES = ("auto", "model", "calibrated")
SCORES = ("sum", "mean")  # calibration keeps the one that separates the held-out half better (ties: sum)


@dataclass(frozen=True)
class Abstention:
    """How a system decides to abstain: by the model's text alone (threshold None) or also by its margin."""

    threshold: float | None = None
    score: str = "sum"  # SCORES: the margin of whole-sequence log-probabilities, or of per-token means

    def decide(self, answer: str, margin: float | None) -> str:
        if self.threshold is None or margin is None or abstained(answer):
            return answer
        return ABSTAIN_PHRASE if margin > self.threshold else answer

    @classmethod
    def from_record(cls, record: dict | None) -> Abstention:
        if not record or record.get("mode") != "calibrated":
            return cls()
        return cls(record.get("threshold"), record.get("score", "sum"))


def response_logprobs(model, tokenizer, prompts: list[str] | list[list[int]], responses: list[str],
                      batch_size: int = 8, score: str = "sum") -> list[float]:
    """log P(response + end-of-turn | prompt) for each pair: the sum over the response's tokens (`score` "mean":
    per token). A prompt is the rendered text or its token ids."""
    import torch

    end = tokenizer.eos_token_id
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[start:start + batch_size], responses[start:start + batch_size], strict=True))
        seqs, spans = [], []
        for prompt, response in pairs:
            p = list(prompt) if not isinstance(prompt, str) else tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
            seqs.append(p + r)
            spans.append((len(p), len(p) + len(r)))
        width = max(len(s) for s in seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=model.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for row, (seq, (a, b)) in enumerate(zip(seqs, spans, strict=True)):
            shift = width - len(seq)
            targets = ids[row, shift + a:shift + b]
            picked = logp[row, shift + a - 1:shift + b - 1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out.append(float(picked.sum()) / (1 if score == "sum" else len(picked)))
    return out


def margins(model, tokenizer, prompts: list[str] | list[list[int]], answers: list[str],
            score: str = "sum") -> list[float]:
    """log P(abstain phrase) - log P(answer), per prompt (0.0 where the answer is the abstain phrase)."""
    said = response_logprobs(model, tokenizer, prompts, answers, score=score)
    phrase = response_logprobs(model, tokenizer, prompts, [ABSTAIN_PHRASE] * len(prompts), score=score)
    return [0.0 if abstained(a) else p - s for a, p, s in zip(answers, phrase, said, strict=True)]


def without_gold(system, question: str, gold_ids: set[str]) -> list[tuple[str, str]]:
    """What retrieval returns for `question` once the gold documents' chunks are taken out: top_k chunks of
    the other documents (the context a missed document leaves; the answer should be declined)."""
    k = system.top_k
    hits = system.retrieve(question, k + 10 * k)
    return [(h.title, h.text) for h in hits if h.doc_id not in gold_ids][:k]


def calibrate(answerable: list[tuple[float, bool, bool]], declinable: list[tuple[float, bool]]) -> dict:
    """The threshold from the answerable prompts' (margin, model said the phrase, answered right) and the
    prompts that should be declined (margin, model said the phrase): the one maximizing the mean of the
    answered-right and declined rates. Ties keep the model's text alone, then the higher threshold."""
    def rates(t: float | None) -> tuple[float, float]:
        declines = lambda m, said: said or (t is not None and m > t)  # noqa: E731
        right = sum(ok and not declines(m, said) for m, said, ok in answerable) / max(1, len(answerable))
        declined = sum(declines(m, said) for m, said in declinable) / max(1, len(declinable))
        return right, declined

    values = sorted({m for m, said, _ in answerable if not said} | {m for m, said in declinable if not said})
    candidates = [None] + [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)] + (
        [values[0] - 1.0] if values else [])
    scored = []
    for t in candidates:
        right, declined = rates(t)
        scored.append({"t": t, "balanced": (right + declined) / 2, "answered_right": right, "declined": declined})
    best = max(scored, key=lambda s: (round(s["balanced"], 9), s["t"] is None, s["t"] or 0.0))
    model = scored[0]
    return {"threshold": None if best["t"] is None else round(best["t"], 4),
            **{k: round(best[k], 4) for k in ("balanced", "answered_right", "declined")},
            "model_only": {k: round(model[k], 4) for k in ("balanced", "answered_right", "declined")}}


def calibrate_system(system, items: list, gold_ids: list[list[str]]) -> dict:
    """Calibrate `system`'s reader on held-out `items` (components.evaluate.EvalItem with gold documents,
    `gold_ids` resolved to the index's ids): the record `Abstention.from_record` reads."""
    from components.data import render_prompt

    answer_ctx, decline_ctx = [], []
    for item, gold in zip(items, gold_ids, strict=True):
        answer_ctx.append([(h.title, h.text) for h in system.retrieve(item.query)])
        decline_ctx.append(without_gold(system, item.query, set(gold)))
    prompts = [with_context(i.messages, c) for i, c in zip(items, answer_ctx, strict=True)]
    prompts += [with_context(i.messages, c) for i, c in zip(items, decline_ctx, strict=True)]
    answers = system.generate(prompts, use_adapter=True, abstention=False)
    tok = system.handle.tokenizer
    rendered = [render_prompt(tok, p) for p in prompts]
    n, said = len(items), [bool(abstained(a)) for a in answers]
    right = [bool(contains_answer(a, i.golds)) for a, i in zip(answers[:n], items, strict=True)]
    tried = {}
    for score in SCORES:
        with system.using(use_adapter=True) as model:
            found = margins(model, tok, rendered, answers, score=score)
        tried[score] = calibrate(list(zip(found[:n], said[:n], right, strict=True)),
                                 list(zip(found[n:], said[n:], strict=True)))
    score = max(SCORES, key=lambda s: (tried[s]["balanced"], s == "sum"))
    return {"mode": "calibrated", "score": score, **tried[score], "questions": n,
            "tried": {s: {k: tried[s][k] for k in ("threshold", "balanced")} for s in SCORES},
            "rule": "abstain when the answer says it or log P(phrase) - log P(answer) > threshold (sums over the "
                    "tokens, or per-token means: `score`); threshold and score maximize the mean of answered-right "
                    "(retrieved context) and declined (gold documents removed) on the held-out half"}
