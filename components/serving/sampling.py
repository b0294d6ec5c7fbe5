"""Per-request token choice: what OpenAI's sampling fields mean, row by row inside a batch.

Every row owns a `torch.Generator` seeded from the request's `seed`, so a seeded request samples the
same tokens whatever else shares its batch (the logits it sees differ from a batch of one only by
float rounding).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 48
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # an llguidance grammar (components.serving.grammar)


@dataclass
class TokenChoice:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def make_generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(seed if seed is not None else random.getrandbits(63))


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator,
           allowed: torch.Tensor | None = None) -> TokenChoice:
    """One token from one row's next-token logits (float32, [vocab]); `allowed` is a grammar's mask. A greedy
    choice without `logprobs` carries a NaN logprob (nobody reads it)."""
    logits = logits.float()
    if params.temperature <= 0 and allowed is None and not params.logprobs:  # plain greedy: nothing else to compute
        return TokenChoice(int(torch.argmax(logits)), math.nan)
    logprobs = torch.log_softmax(logits, dim=-1)  # the model's own distribution, reported as logprobs
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if params.temperature <= 0:
        token = int(torch.argmax(logits))
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            probs = _top_p(probs, params.top_p)
        token = int(torch.multinomial(probs, 1, generator=generator))
    top = []
    if params.top_logprobs:
        values, ids = torch.topk(logprobs, min(params.top_logprobs, MAX_TOP_LOGPROBS))
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenChoice(token, float(logprobs[token]), top)


def scored(logits: torch.Tensor, targets: list[int], top: int = 0) -> list[TokenChoice]:
    """Each target token's log-probability under its row of `logits` ([len(targets), vocab]), with the `top` most
    likely tokens of each row: a prompt's own tokens scored (`echo` with `logprobs`)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None])[:, 0].tolist()
    if not top:
        return [TokenChoice(t, lp) for t, lp in zip(targets, picked, strict=True)]
    values, ids = torch.topk(logprobs, min(top, MAX_TOP_LOGPROBS), dim=-1)
    return [TokenChoice(t, lp, list(zip(i, v, strict=True)))
            for t, lp, i, v in zip(targets, picked, ids.tolist(), values.tolist(), strict=True)]


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (always at least one)."""
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
    kept = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return kept / kept.sum()


class TextTracker:
    """Incremental detokenization with OpenAI's `stop`: the text up to (not including) the first stop
    string; pieces are released only once no stop string can still begin inside them."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.text, self.emitted, self.stopped = "", 0, False

    def push(self, ids: list[int]) -> str:
        """The generated ids so far -> the new text that is safe to send."""
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = self._first_stop(full)
        if cut is not None:
            self.stopped, self.text = True, full[:cut]
            return self._release(cut)
        self.text = full
        safe = len(full) - self._hold
        if full.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            safe = min(safe, len(full) - 1)
        return self._release(safe)

    def flush(self) -> str:
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece

    def _first_stop(self, full: str) -> int | None:
        start = max(0, self.emitted - self._hold)
        hits = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None
