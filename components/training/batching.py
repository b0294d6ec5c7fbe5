"""Batches of tokenized examples: packed rows or length-grouped padded rows, in a seeded order.

A micro-batch always holds `batch_size` examples, so packing and grouping take the same number
of optimizer steps and see the same examples per epoch; only the tensor layout differs.

- packed: the examples are packed first-fit-decreasing into rows of at most `max_seq_len`;
  position ids restart at 0 for each example and no 2D attention mask is passed, which makes
  transformers build a block-diagonal causal mask (no attention across examples).
- grouped: examples of similar length share a micro-batch (sorted within shuffled megabatches)
  and are right-padded with an attention mask.

`targets` are the labels already shifted inside each example (targets[t] is the label of token
t+1 of the same example), so no position predicts across an example boundary or into padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from components.training.data import IGNORE_INDEX, TokenizedExample

MEGABATCH = 32  # micro-batches per length-sorted megabatch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, T]
    targets: torch.Tensor  # [rows, T], IGNORE_INDEX where nothing is predicted
    position_ids: torch.Tensor | None  # packed rows
    attention_mask: torch.Tensor | None  # padded rows
    n_tokens: int  # real (non-pad) tokens
    n_targets: int  # answer tokens that carry loss

    def model_inputs(self) -> dict:
        inputs = {"input_ids": self.input_ids}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch; a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    size = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), size):
        mega = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches.extend(mega[i:i + batch_size] for i in range(0, len(mega), batch_size))
    shuffled = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in shuffled]


def _shifted(labels: tuple[int, ...]) -> list[int]:
    return list(labels[1:]) + [IGNORE_INDEX]


def _pack(items: list[TokenizedExample], max_seq_len: int) -> list[list[TokenizedExample]]:
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for item in sorted(items, key=len, reverse=True):
        for r, free in enumerate(room):
            if len(item) <= free:
                rows[r].append(item)
                room[r] -= len(item)
                break
        else:
            rows.append([item])
            room.append(max_seq_len - len(item))
    return rows


def collate_packed(items: list[TokenizedExample], pad_id: int, max_seq_len: int) -> Batch:
    rows = _pack(items, max_seq_len)
    width = max(sum(len(i) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for item in row:
            n = len(item)
            ids[r, at:at + n] = torch.tensor(item.input_ids)
            targets[r, at:at + n] = torch.tensor(_shifted(item.labels))
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)  # padding forms its own block: nobody attends to it
    return Batch(ids, targets, positions, None, sum(len(i) for i in items), int((targets != IGNORE_INDEX).sum()))


def collate_padded(items: list[TokenizedExample], pad_id: int) -> Batch:
    width = max(len(i) for i in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, item in enumerate(items):
        ids[r, :len(item)] = torch.tensor(item.input_ids)
        targets[r, :len(item)] = torch.tensor(_shifted(item.labels))
        mask[r, :len(item)] = 1
    return Batch(ids, targets, None, mask, sum(len(i) for i in items), int((targets != IGNORE_INDEX).sum()))


def collate(items: list[TokenizedExample], pad_id: int, max_seq_len: int, packed: bool) -> Batch:
    return collate_packed(items, pad_id, max_seq_len) if packed else collate_padded(items, pad_id)


def micro_batches(
    examples: list[TokenizedExample], batch_size: int, seed: int, packed: bool, max_seq_len: int, pad_id: int,
    start: tuple[int, int] = (0, 0), shard: Callable[[list[int]], list[int]] | None = None,
) -> Iterator[tuple[int, int, Batch | None]]:
    """An endless stream of (epoch, index in epoch, Batch), starting at data position `start`. With `shard`
    (one training process's share of a micro-batch's example indices), the Batch holds that share only:
    None when the share is empty (the short last micro-batch of an epoch, on more processes than it has rows)."""
    lengths = [len(e) for e in examples]
    epoch, index = start
    while True:
        batches = epoch_batches(lengths, batch_size, seed, epoch, group_by_length=not packed)
        for i in range(index, len(batches)):
            chosen = shard(batches[i]) if shard is not None else batches[i]
            yield epoch, i, collate([examples[j] for j in chosen], pad_id, max_seq_len, packed) if chosen else None
        epoch, index = epoch + 1, 0


def eval_batches(examples: list[TokenizedExample], batch_size: int, packed: bool, max_seq_len: int, pad_id: int) -> Iterator[Batch]:
    """The eval set in a fixed, length-sorted order (no shuffling)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    for i in range(0, len(order), batch_size):
        yield collate([examples[j] for j in order[i:i + batch_size]], pad_id, max_seq_len, packed)
