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

A second signal asks the context instead of the model. A reader that should decline often copies a span
that answers a different question (a name from the right document, a number from the wrong sentence). The
**support** of an answer is how much of the question the context around it speaks to: over the sentences of
the retrieved chunks that contain the answer's words, the largest

    (share of the answer's terms in the sentence) x (IDF-weighted share of the question's terms found in the
                                                    sentence, the sentence before it, or the chunk's title)

(terms: normalized words less English stop words and question frames, stemmed; IDF over every chunk
of the index, so a question word the documents never use weighs most). An answer found in no sentence has
support 0. It is the lexical answer-verification check of classic QA systems (answer-bearing sentence
against question), with no second model.

The system abstains when the model's answer says the phrase, or its margin is above a threshold, or its
support is below a minimum. Both limits are **calibrated together on the held-out half** of the evaluation
questions, the half the index tuning already measures on (vectorstore.tune) and the evaluation leaves out, so
they never see the questions they are judged on. Each held-out question with gold documents is asked twice:

- with what retrieval returns: it should be answered (it counts when the answer contains the gold answer);
- with the gold documents' chunks removed from the retrieved ones: the context lacks the answer, it should
  abstain.

The limits maximize the mean of the two rates (answered right, abstained right): equal weight, since the
share of unanswerable questions a user will ask is unknown. Ties use fewer limits (a rule fitted to some
twenty questions should have as few parameters as it can), then replace the fewest answers, then the laxer
limit. The result is recorded in the evaluation report (`abstention`), and the served
system (adaptflow.system) answers with the same rule.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from components.evaluation.metrics import abstained, contains_answer, normalize_answer
from components.models.prompting import ABSTAIN_PHRASE, last_user_text, split_context, with_context

MODES = ("auto", "model", "calibrated")
SCORES = ("sum", "mean")  # calibration keeps the one that separates the held-out half better (ties: sum)


@dataclass(frozen=True)
class Abstention:
    """How a system decides to abstain: by the model's text alone (no limits), or also by its margin and the
    context's support of its answer."""

    threshold: float | None = None  # abstain when the margin is above it
    score: str = "sum"  # SCORES: the margin of whole-sequence log-probabilities, or of per-token means
    min_support: float | None = None  # abstain when the answer's support is below it

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None or self.min_support is not None

    def decide(self, answer: str, margin: float | None, support: float | None = None) -> str:
        if abstained(answer):
            return answer
        if self.threshold is not None and margin is not None and margin > self.threshold:
            return ABSTAIN_PHRASE
        if self.min_support is not None and support is not None and support < self.min_support:
            return ABSTAIN_PHRASE
        return answer

    @classmethod
    def from_record(cls, record: dict | None) -> Abstention:
        if not record or record.get("mode") != "calibrated":
            return cls()
        return cls(record.get("threshold"), record.get("score", "sum"), record.get("min_support"))


# --- the context's support of an answer ----------------------------------------------------------------------

QUESTION_FRAMES = frozenset({"name", "named", "called", "many", "much", "long", "often", "current", "currently"})
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS  # NLTK's English list, shipped with the BM25 library we use

    return frozenset(STOPWORDS_EN_PLUS) | QUESTION_FRAMES


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def terms(text: str) -> set[str]:
    """Normalized words (components.evaluation.metrics.normalize_answer) less stop words and question frames, stemmed
    (Snowball English: "opened" and "open" meet)."""
    stop = _stopwords()
    return set(_stemmer().stemWords([w for w in normalize_answer(text).split() if w not in stop]))


class Support:
    """Scores how much of a question the context around an answer speaks to (module docstring); the IDF comes
    from `texts`, every chunk of the index."""

    def __init__(self, texts: list[str]):
        sets = [terms(t) for t in texts]
        self.n = len(sets)
        self.df = Counter(w for s in sets for w in s)

    def idf(self, word: str) -> float:
        return math.log((self.n + 1) / (self.df.get(word, 0) + 0.5))

    def score(self, question: str, answer: str, chunks: list[tuple[str, str]]) -> float:
        asked = terms(question)
        said = terms(answer) or set(normalize_answer(answer).split())
        if not asked:
            return 1.0  # nothing to check the context against
        if not said:
            return 0.0
        total = sum(self.idf(w) for w in asked)
        best = 0.0
        for title, text in chunks:
            sentences = [terms(x) for x in _SENTENCE_END.split(" ".join(text.split())) if x]
            titled = terms(title)
            for i, words in enumerate(sentences):
                found = len(said & words) / len(said)
                if found:
                    around = words | titled | (sentences[i - 1] if i else set())
                    best = max(best, found * sum(self.idf(w) for w in asked if w in around) / total)
        return best

    def of_prompt(self, user_text: str, answer: str) -> float | None:
        """The support of `answer` to the question in a `with_context` user message (None: not that shape)."""
        parsed = split_context(user_text)
        return None if parsed is None else self.score(parsed[1], answer, parsed[0])


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


def calibrate(answerable: list[tuple], declinable: list[tuple]) -> dict:
    """The limits from the answerable prompts' (margin, model said the phrase, answered right[, support]) and the
    prompts that should be declined (margin, model said the phrase[, support]): the margin threshold and the
    minimum support (each may be none) maximizing the mean of the answered-right and declined rates, among the
    limits that answer as many questions right as the model's text alone (declining costs no answer). Ties use
    fewer limits (one rule fitted to a few questions, not two), then replace the fewest answers, then keep the
    margin alone to the support alone, then the laxer limit."""
    ans = [(a[0], a[1], a[2], a[3] if len(a) > 3 else None) for a in answerable]
    dec = [(d[0], d[1], d[2] if len(d) > 2 else None) for d in declinable]

    def declines(m: float, said: bool, s: float | None, t: float | None, u: float | None) -> bool:
        return said or (t is not None and m > t) or (u is not None and s is not None and s < u)

    def rates(t: float | None, u: float | None) -> tuple[float, float, int]:
        kept = [ok and not declines(m, said, s, t, u) for m, said, ok, s in ans]
        declined = sum(declines(m, said, s, t, u) for m, said, s in dec) / max(1, len(dec))
        replaced = sum(declines(m, False, s, t, u) for m, said, _, s in ans if not said)
        return sum(kept) / max(1, len(ans)), declined, replaced

    def cuts(values: set[float], below: bool) -> list[float | None]:
        v = sorted(values)
        edge = ([v[-1] + 1.0] if below else [v[0] - 1.0]) if v else []
        return [None] + [(a + b) / 2 for a, b in zip(v, v[1:], strict=False)] + edge

    margins_seen = {a[0] for a in ans if not a[1]} | {d[0] for d in dec if not d[1]}
    supports_seen = {s for _, said, _, s in ans if not said and s is not None} | {
        s for _, said, s in dec if not said and s is not None}
    scored = []
    for t in cuts(margins_seen, below=False):
        for u in cuts(supports_seen, below=True):
            right, declined, replaced = rates(t, u)
            scored.append({"t": t, "u": u, "balanced": (right + declined) / 2, "answered_right": right,
                           "declined": declined, "replaced": replaced})
    model = scored[0]
    # A limit may decline more, never answer fewer: a rule that replaces a held-out question the reader had right is
    # not eligible (on the season corpus the best balanced rule declined every unanswerable question and cost
    # answers, so contains-answer fell below base+retrieval: docs/reading.md). The model's text alone always is.
    eligible = [s for s in scored if s["answered_right"] >= model["answered_right"]]
    best = max(eligible, key=lambda s: (round(s["balanced"], 9), -((s["t"] is not None) + (s["u"] is not None)),
                                        -s["replaced"], s["u"] is None, s["t"] or 0.0, -(s["u"] or 0.0)))
    return {"threshold": None if best["t"] is None else round(best["t"], 4),
            "min_support": None if best["u"] is None else round(best["u"], 4),
            **{k: round(best[k], 4) for k in ("balanced", "answered_right", "declined")},
            "model_only": {k: round(model[k], 4) for k in ("balanced", "answered_right", "declined")}}


def calibrate_system(system, items: list, gold_ids: list[list[str]]) -> dict:
    """Calibrate `system`'s reader on held-out `items` (components.evaluation.arms.EvalItem with gold documents,
    `gold_ids` resolved to the index's ids): the record `Abstention.from_record` reads."""
    from components.training.data import render_prompt

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
    supports = system.supports([last_user_text(p) for p in prompts], answers)
    tried = {}
    for score in SCORES:
        with system.using(use_adapter=True) as model:
            found = margins(model, tok, rendered, answers, score=score)
        tried[score] = calibrate(list(zip(found[:n], said[:n], right, supports[:n], strict=True)),
                                 list(zip(found[n:], said[n:], supports[n:], strict=True)))
    score = max(SCORES, key=lambda s: (tried[s]["balanced"], s == "sum"))
    return {"mode": "calibrated", "score": score, **tried[score], "questions": n,
            "tried": {s: {k: tried[s][k] for k in ("threshold", "min_support", "balanced")} for s in SCORES},
            "rule": "abstain when the answer says it, or log P(phrase) - log P(answer) > threshold (sums over the "
                    "tokens, or per-token means: `score`), or the context's support of the answer < min_support "
                    "(components.evaluation.abstention); the limits and score maximize the mean of answered-right (retrieved "
                    "context) and declined (gold documents removed) on the held-out half"}
