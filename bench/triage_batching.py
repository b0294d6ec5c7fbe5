"""Packing vs length-grouped padding on the built-in model: speed at equal loss.

    ADAPTFLOW_HOME=/tmp/afhome .venv/bin/python -m bench.triage_batching [--batches 6]

Times forward+backward of LoRA on the same micro-batches laid out three ways, interleaved so that
load from other processes hits every layout alike:
  packed          the batch's examples packed into rows of <= max_seq_len (block-diagonal attention)
  padded          the same examples right-padded (attention mask)
  grouped         length-grouped batches (what `packing: false` trains on), right-padded
`packed` and `padded` hold the same examples, so their losses must agree (checked); `grouped`
batches hold different examples of similar length, so only its speed is compared. The batches are
`components.training.batching`'s and the loss is `components.training.recipe.batch_loss`, what the training loop computes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from components.methods.registry import apply_method
from components.models.load import load_model, load_tokenizer
from components.spec.load import load_spec
from components.training.batching import collate, epoch_batches
from components.training.recipe import batch_loss, prepare_data

ROOT = Path(__file__).resolve().parents[1]


def timed_step(model, batch) -> tuple[float, float]:
    start = time.perf_counter()
    loss = batch_loss(model, batch) / batch.n_targets
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default=str(ROOT / "specs/support-triage.yaml"))
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_spec(args.spec, workspace=ROOT)
    spec = task.behavior.training
    tokenizer = load_tokenizer(task.base_model)
    data = prepare_data(task.behavior, tokenizer).train
    model = apply_method(load_model(task.base_model, device="cpu"), task.behavior.adapter, tokenizer=tokenizer)
    model.train()
    lengths = [len(e) for e in data.examples]
    random_batches = epoch_batches(lengths, spec.batch_size, spec.seed, 0, group_by_length=False)[: args.batches]
    grouped_batches = epoch_batches(lengths, spec.batch_size, spec.seed, 0, group_by_length=True)[: args.batches]
    pad = tokenizer.pad_token_id
    totals = {k: {"seconds": 0.0, "tokens": 0, "cells": 0} for k in ("packed", "padded", "grouped")}
    worst = 0.0
    timed_step(model, collate([data.examples[i] for i in random_batches[0]], pad, spec.max_seq_len, True))  # warm-up
    for rnd, grp in zip(random_batches, grouped_batches, strict=False):
        items = [data.examples[i] for i in rnd]
        layouts = {
            "packed": collate(items, pad, spec.max_seq_len, packed=True),
            "padded": collate(items, pad, spec.max_seq_len, packed=False),
            "grouped": collate([data.examples[i] for i in grp], pad, spec.max_seq_len, packed=False),
        }
        losses = {}
        for name, batch in layouts.items():
            seconds, losses[name] = timed_step(model, batch)
            totals[name]["seconds"] += seconds
            totals[name]["tokens"] += batch.n_tokens
            totals[name]["cells"] += batch.input_ids.numel()
        worst = max(worst, abs(losses["packed"] - losses["padded"]))
    report = {
        name: {"tokens_per_s": round(t["tokens"] / t["seconds"], 1), "padding_waste": round(1 - t["tokens"] / t["cells"], 3),
               "seconds": round(t["seconds"], 2)}
        for name, t in totals.items()
    }
    report["max_loss_diff_packed_vs_padded"] = worst
    report["batch_size"], report["max_seq_len"], report["batches"] = spec.batch_size, spec.max_seq_len, args.batches
    report["threads"] = torch.get_num_threads()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
