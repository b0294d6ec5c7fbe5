"""Measure the triage task: base exact-match, then train an adapter and measure it again.

    ADAPTFLOW_HOME=/tmp/afhome .venv/bin/python -m bench.triage_measure --method lora --out /tmp/triage-lora
    ADAPTFLOW_HOME=/tmp/afhome .venv/bin/python -m bench.triage_measure --method qlora --out /tmp/triage-qlora

`--method qlora` trains the same spec's LoRA settings on a 4-bit NF4 (double-quant) base. Training is
`components.training.recipe.train`, the entry point `adaptflow run` trains through; this script adds the
exact-match measurement before and after. Prompts are rendered with `components.training.data.render_prompt`, exactly as in training; the answer is
the first line of the greedy output, lower-cased, trailing punctuation stripped. Prints a JSON
summary and writes it to OUT/measure.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from components.methods.io import load_adapter
from components.models.load import load_model, load_tokenizer, resolve_model
from components.spec import QLoraSpec, QuantizationSpec, TaskSpec
from components.spec.load import load_spec
from components.training.data import Example, load_examples, prompt_messages, render_prompt
from components.training.recipe import prepare_data, train

ROOT = Path(__file__).resolve().parents[1]


def normalize(text: str) -> str:
    lines = text.strip().splitlines()
    return (lines[0] if lines else "").strip().strip(".!,;:'\"`").strip().lower()


@torch.no_grad()
def exact_match(model, tokenizer, examples: list[Example], batch_size: int = 20, max_new_tokens: int = 8) -> tuple[float, list]:
    model.eval()
    tokenizer.padding_side = "left"
    hits, outputs = 0, []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        texts = [render_prompt(tokenizer, prompt_messages(e)) for e in chunk]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for example, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:], strict=True):
            answer = tokenizer.decode(row, skip_special_tokens=True)
            hits += normalize(answer) == normalize(example.answer)
            outputs.append(answer)
    tokenizer.padding_side = "right"
    return hits / len(examples), outputs


def with_method(task: TaskSpec, method: str, bits: int) -> TaskSpec:
    if method == "lora":
        return task
    behavior = task.behavior
    adapter = QLoraSpec(**behavior.adapter.model_dump(exclude={"method"}))
    return task.model_copy(update={
        "base_model": task.base_model.model_copy(update={"quantization": QuantizationSpec(bits=bits)}),
        "behavior": behavior.model_copy(update={"adapter": adapter}),
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default=str(ROOT / "specs/support-triage.yaml"))
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora")
    parser.add_argument("--bits", type=int, choices=[4, 8], default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--eval-only", action="store_true", help="measure the adapter already in OUT/adapter")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = with_method(load_spec(args.spec, workspace=ROOT), args.method, args.bits)
    resolved = resolve_model(task.base_model)
    tokenizer = load_tokenizer(task.base_model, resolved)
    data = prepare_data(task.behavior, tokenizer)
    _, eval_rows = load_examples(task.behavior.data)
    summary: dict = {"method": args.method, "eval_rows": len(eval_rows), "spec": str(args.spec),
                     "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    if not args.skip_base:
        start = time.time()
        base = load_model(task.base_model, resolved)
        summary["base_em"], outputs = exact_match(base, tokenizer, eval_rows)
        summary["base_seconds"], summary["base_samples"] = round(time.time() - start, 1), outputs[:3]
        del base
    if not args.eval_only:
        start = time.time()
        record = train(load_model(task.base_model, resolved), tokenizer, task.behavior, args.out, data=data)
        summary["train_seconds"] = round(time.time() - start, 1)
        summary.update(tokens_per_s=round(record.tokens_per_second, 1), steps=record.steps, final_loss=record.final_loss,
                       eval_loss=record.final_eval_loss, trainable_params=record.trainable_params,
                       adapter_bytes=record.adapter_bytes, peak_rss_mb=round(record.peak_rss_mb),
                       batching=record.batching)
    start = time.time()
    fresh = load_adapter(load_model(task.base_model, resolved), args.out / "adapter")
    summary["tuned_em"], outputs = exact_match(fresh, tokenizer, eval_rows)
    summary["tuned_seconds"] = round(time.time() - start, 1)
    summary["tuned_errors"] = [{"ticket": e.messages[-2]["content"], "answer": e.answer, "got": o}
                               for e, o in zip(eval_rows, outputs, strict=True) if normalize(o) != normalize(e.answer)]
    print(json.dumps(summary, indent=2))
    (args.out / "measure.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
