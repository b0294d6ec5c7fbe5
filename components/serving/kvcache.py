"""A batch's KV cache, left-padded: rows join (their prefill cache is padded and stacked), rows leave
(selected out), and the columns no row needs any more are cut from the left.

Works on transformers' `DynamicCache` of plain `DynamicLayer`s (Llama, Qwen, Mistral without sliding
windows); the attention mask marks the padding, so padded keys are never attended to.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def check_mergeable(cache: DynamicCache) -> None:
    kinds = {type(layer).__name__ for layer in cache.layers}
    if kinds != {DynamicLayer.__name__}:
        raise TypeError(f"continuous batching needs plain dynamic cache layers; this model uses {sorted(kinds)}")


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - t.shape[-2]
    if missing == 0:
        return t
    pad = t.new_zeros(*t.shape[:-2], missing, t.shape[-1])
    return torch.cat([pad, t], dim=-2)


def merge(a: DynamicCache, mask_a: torch.Tensor, b: DynamicCache, mask_b: torch.Tensor
          ) -> tuple[DynamicCache, torch.Tensor]:
    """Rows of `a` then rows of `b`, both left-padded to the longer of the two."""
    check_mergeable(a)
    check_mergeable(b)
    length = max(mask_a.shape[1], mask_b.shape[1])
    for la, lb in zip(a.layers, b.layers, strict=True):
        la.keys = torch.cat([_pad_left(la.keys, length), _pad_left(lb.keys, length)], dim=0)
        la.values = torch.cat([_pad_left(la.values, length), _pad_left(lb.values, length)], dim=0)
    mask = torch.cat([_pad_mask(mask_a, length), _pad_mask(mask_b, length)], dim=0)
    return a, mask


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], length - mask.shape[1]), mask], dim=1)


def select(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """Only the rows in `keep`, with leading columns that are padding in every kept row cut off."""
    index = torch.tensor(keep, dtype=torch.long)
    mask = mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    for layer in cache.layers:
        rows = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(0, rows)[..., start:, :]
        layer.values = layer.values.index_select(0, rows)[..., start:, :]
    return cache, mask[:, start:]


def with_past(pasts: list[list[tuple[torch.Tensor, torch.Tensor]] | None], lengths: list[int]
              ) -> tuple[DynamicCache, torch.Tensor]:
    """A left-padded cache of each row's reused prompt prefix (`pasts[r]`: per layer (keys, values) of shape
    [1, heads, >= lengths[r], dim], or None for a row without one) and its mask [rows, max(lengths)]."""
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, width - n:] = 1
    sample = next(p for p in pasts if p is not None)
    layers = []
    for i, (k0, v0) in enumerate(sample):
        keys = k0.new_zeros(len(lengths), k0.shape[1], width, k0.shape[-1])
        values = v0.new_zeros(len(lengths), v0.shape[1], width, v0.shape[-1])
        for r, (past, n) in enumerate(zip(pasts, lengths, strict=True)):
            if n:
                keys[r, :, width - n:] = past[i][0][0, :, :n]
                values[r, :, width - n:] = past[i][1][0, :, :n]
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers), mask


def row_prompt(cache: DynamicCache, mask: torch.Tensor, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One row's keys and values at its unmasked positions, compact ([1, heads, tokens, dim] per layer)."""
    cols = mask[row].nonzero()[:, 0]
    out = []
    for layer in cache.layers:
        index = cols.to(layer.keys.device)
        out.append((layer.keys[row:row + 1].index_select(-2, index), layer.values[row:row + 1].index_select(-2, index)))
    return out


class PrefixStore:
    """The KV cache of recent prompts, per route, so that a new prompt's prefill starts after the longest prefix it
    shares with one of them (a system's system prompt and template head; a question asked again). Keys and values
    at a position depend only on the tokens up to it (causal attention, RoPE applied before caching), so the
    reused part is what a whole prefill computes, up to float rounding. Bounded by bytes, least recently used out."""

    def __init__(self, budget_bytes: int = 64 * 2**20, min_tokens: int = 16):
        self.budget, self.min_tokens = budget_bytes, min_tokens
        self._entries: list[tuple[tuple, object, list[int], list, int]] = []  # (key, model ref, ids, kv, bytes)
        self.hits = self.tokens_reused = 0

    def lookup(self, key: tuple, model: object, ids: list[int]) -> tuple[list | None, int]:
        """(per-layer KV, reusable length) of the entry sharing the longest prefix with `ids` (at most all but the
        last token: the prefill must still compute that one's logits), or (None, 0) under `min_tokens`."""
        best, best_n = None, 0
        for entry in self._entries:
            if entry[0] != key or entry[1]() is not model:
                continue
            n = _common(entry[2], ids)
            if n > best_n:
                best, best_n = entry, n
        best_n = min(best_n, len(ids) - 1)
        if best is None or best_n < self.min_tokens:
            return None, 0
        self._entries.remove(best)
        self._entries.append(best)  # most recently used last
        self.hits, self.tokens_reused = self.hits + 1, self.tokens_reused + best_n
        return best[3], best_n

    def covered(self, key: tuple, model: object, ids: list[int]) -> bool:
        return any(e[0] == key and e[1]() is model and len(e[2]) >= len(ids) and _common(e[2], ids) == len(ids)
                   for e in self._entries)

    def add(self, key: tuple, model: object, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        import weakref

        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.budget:
            return
        self._entries.append((key, weakref.ref(model), list(ids), kv, size))
        while sum(e[4] for e in self._entries) > self.budget:
            self._entries.pop(0)

    def clear(self) -> None:
        self._entries.clear()


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
