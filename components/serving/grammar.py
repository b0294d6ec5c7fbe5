"""`response_format` as constrained decoding, through llguidance (see docs/decisions.md).

A request's JSON schema (or "any JSON object") becomes an llguidance grammar once, checked against the
tokenizer before the request is queued; each row then owns a matcher that masks the tokens the grammar
forbids at every step and follows the tokens chosen.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

_TOKENIZERS: dict[int, object] = {}
_LOCK = threading.Lock()
# no free whitespace: a small model that may write spaces forever cannot, and the output is compact JSON
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = {"type": "object"}


class GrammarError(ValueError):
    """The schema cannot be compiled (the server answers 400)."""


def ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of a Hugging Face tokenizer (~1 s to build, so built once per tokenizer)."""
    import llguidance.hf

    with _LOCK:
        key = id(tokenizer)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        return _TOKENIZERS[key]


def json_grammar(schema: dict | None, tokenizer, vocab_size: int) -> str:
    """The grammar for `schema` (None: any JSON object), or GrammarError saying what is wrong with it."""
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema or ANY_OBJECT), defaults=JSON_OPTIONS)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise GrammarError(f"the JSON schema cannot be used: {exc}") from None
    problem = LLMatcher.validate_grammar(grammar, ll_tokenizer(tokenizer, vocab_size))
    if problem:
        raise GrammarError(f"the JSON schema cannot be used: {problem}")
    return grammar


class Matcher:
    """One row's grammar state: the allowed next tokens, then the token chosen."""

    def __init__(self, grammar: str, tokenizer, vocab_size: int):
        import llguidance.torch
        from llguidance import LLMatcher

        self._ll = LLMatcher(ll_tokenizer(tokenizer, vocab_size), grammar)
        self._bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        self._fill = llguidance.torch.fill_next_token_bitmask
        self.vocab_size = vocab_size

    def allowed(self, n_logits: int) -> torch.Tensor:
        """A bool mask over the model's logits (a model may have more logits than the tokenizer has tokens)."""
        self._fill(self._ll, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")[:n_logits]
        mask = torch.zeros(n_logits, dtype=torch.bool)
        mask[: len(bits)] = torch.from_numpy(bits.astype(bool))
        return mask

    def accept(self, token: int) -> None:
        if not self._ll.consume_token(token):
            raise GrammarError(f"constrained decoding failed: {self._ll.get_error()}")

    def done(self) -> bool:
        return self._ll.is_stopped()
