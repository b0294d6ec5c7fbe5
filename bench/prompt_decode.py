"""A served prompt-learning system's decoding, on its KV cache vs whole forward passes, same process.

    .venv/bin/python -m bench.prompt_decode

A prompt-tuning adapter (20 virtual tokens, random weights: what is measured is decoding, not what it
learned) on the built-in model, served the way `adaptflow serve` serves it (`System.complete`, the engine:
a prefill through peft puts the virtual tokens in the KV cache, then one token per step). The baseline is
how the engine decoded these systems before: every step one forward pass of the PeftModel over virtual
tokens + prompt + everything generated so far, no cache (what peft's forward does when called plainly).
Both greedy, 1 torch thread, same prompt, same number of new tokens; the tokens must be the same.

- `prompt_decode_speedup` = baseline seconds / served seconds for the same `NEW_TOKENS`.
- `prompt_batch_throughput_ratio`: `CONCURRENT` questions of different lengths to the same system submitted
  at once (their rows share forward passes: the virtual tokens enter each row's cache before its padding)
  against the same requests one after another; tokens per second, each answer the same both ways.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NEW_TOKENS = 96
QUESTION = "Write a short note to a customer whose parcel is a week late, and say what happens next."
CONCURRENT = ["Where is my parcel?", "The app crashes on start, what should I do?",
              "My card was charged twice for one order; please explain how I get the money back.",
              "Can I change the delivery address after ordering?"]
BATCH_TOKENS = 48


def task_spec():
    from components.spec import TaskSpec

    data = {"name": "prompt-decode", "goal": "behavior", "evaluation": {"max_new_tokens": NEW_TOKENS},
            "behavior": {"data": {"train": "unused.jsonl"},
                         "adapter": {"method": "prompt_tuning", "num_virtual_tokens": 20}}}
    return TaskSpec.model_validate(data, context={"check_exists": False})


def make_adapter(spec, folder: Path) -> Path:
    import torch

    from components.methods.io import save_adapter
    from components.methods.registry import apply_method
    from components.models.load import load_model

    torch.manual_seed(0)  # the soft prompt's own random init too: the same adapter every run
    model = apply_method(load_model(spec.base_model), spec.behavior.adapter)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.01)
    return save_adapter(model, spec.behavior.adapter, folder / "adapter")


def whole_passes(model, ids: list[int], n: int, eos: set[int]) -> list[int]:
    import torch

    seq = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            nxt = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits[0, -1].argmax()
            if nxt.item() in eos:
                break
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return seq[0, len(ids):].tolist()


def concurrent(system, params) -> tuple[list, float]:
    import queue

    events: queue.SimpleQueue = queue.SimpleQueue()
    start = time.perf_counter()
    for i, question in enumerate(CONCURRENT):
        system.submit(system.prepare_chat([{"role": "user", "content": question}]), params, events.put, index=i)
    done: dict = {}
    while len(done) < len(CONCURRENT):
        kind, index, *payload = events.get(timeout=600)
        if kind == "error":
            raise payload[0]
        if kind == "done":
            done[index] = payload[0]
    return [done[i] for i in range(len(CONCURRENT))], time.perf_counter() - start


def run() -> dict:
    import torch

    from adaptflow.system import System
    from components.serving.sampling import SamplingParams

    torch.set_num_threads(1)
    spec = task_spec()
    with tempfile.TemporaryDirectory(prefix="prompt-decode-") as tmp:
        system = System("prompt-decode@v1", spec, make_adapter(spec, Path(tmp)), None)
        prepared = system.prepare_chat([{"role": "user", "content": QUESTION}])
        system.complete(prepared, SamplingParams(4))  # warm-up
        start = time.perf_counter()
        done = system.complete(prepared, SamplingParams(NEW_TOKENS))
        served = time.perf_counter() - start
        model, ctx = system._model_for(True)
        eos = {system.handle.tokenizer.eos_token_id}
        with system.handle.lock, ctx:
            start = time.perf_counter()
            tokens = whole_passes(model, prepared.ids, len(done.token_ids), eos)
            baseline = time.perf_counter() - start
        params = SamplingParams(BATCH_TOKENS)
        start = time.perf_counter()
        alone = [system.complete(system.prepare_chat([{"role": "user", "content": q}]), params) for q in CONCURRENT]
        sequential = time.perf_counter() - start
        together, batched = concurrent(system, params)
    tokens_alone, tokens_together = sum(len(c.token_ids) for c in alone), sum(len(c.token_ids) for c in together)
    return {
        "prompt_batch_throughput_ratio": round((tokens_together / batched) / (tokens_alone / sequential), 2),
        "batch_sequential_s": round(sequential, 2), "batch_concurrent_s": round(batched, 2),
        "batch_tokens": tokens_together,
        "batch_same_answers": [c.token_ids for c in alone] == [c.token_ids for c in together],
        "prompt_decode_speedup": round(baseline / served, 2),
        "served_s": round(served, 2), "whole_passes_s": round(baseline, 2),
        "new_tokens": len(done.token_ids), "prompt_tokens": len(prepared.ids), "virtual_tokens": 20,
        "same_tokens": tokens == done.token_ids,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
