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
