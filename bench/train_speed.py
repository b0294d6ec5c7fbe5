"""Adaptflow's training loop vs a plain HF `Trainer` + peft script, same model, data and hyperparameters.

    .venv/bin/python -m bench.train_speed            # ~6-10 min on 2 CPU cores

Baseline: what a user would write by hand: `Trainer` (bf16=True on a GPU, the same gradient-checkpointing
setting as our run) with `DataCollatorForSeq2Seq` (pad to the
longest example of each batch), the same tokenized examples (prompt masked, EOS kept), the same
LoRA config, lr, schedule, batch size, epochs and seed. Both runs see the same examples the same
number of times. Speed is the ratio of training wall times (= tokens/s ratio, since the token
count is identical); quality is each run's eval loss on the same held-out set, computed by one
shared function. Data: the support-triage example plus a variable-length set made from the lore
documents' paragraphs (continue a passage from its first sentence).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def variable_length_rows(limit: int = 90) -> list[dict]:
    rows = []
    for doc in sorted((REPO / "specs/data/lore/docs").glob("*.md")):
        for para in doc.read_text().split("\n\n"):
            para = " ".join(para.split())
            if para.startswith("#") or len(para.split()) < 25:
                continue
            first, _, rest = para.partition(". ")
            if rest:
                rows.append({"messages": [{"role": "user", "content": f"Continue the passage: {first}."},
                                          {"role": "assistant", "content": rest}]})
    random.Random(0).shuffle(rows)
    return rows[:limit]


def write_data(folder: Path) -> tuple[Path, Path]:
    triage = [json.loads(x) for x in (REPO / "specs/data/triage/train.jsonl").read_text().splitlines() if x.strip()]
    rows = triage[:150] + variable_length_rows()
    random.Random(1).shuffle(rows)
    cut = int(len(rows) * 0.9)
    train, evals = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:cut]))
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows[cut:]))
    return train, evals


def behavior_spec(train: Path, evals: Path):
    from components.spec import BehaviorDataSpec, BehaviorSpec, LoraSpec, TrainingSpec

    return BehaviorSpec(
        data=BehaviorDataSpec(train=train, eval=evals, format="chat"),
        adapter=LoraSpec(r=8, target_modules=["q_proj", "v_proj"]),
        training=TrainingSpec(epochs=1, batch_size=8, lr=5e-4, warmup_ratio=0.05, schedule="cosine",
                              max_seq_len=256, seed=0, eval_every=10_000, checkpoint_every=10_000),
    )


def eval_loss(model, data, behavior, pad_id: int) -> float:
    """Mean answer-token cross-entropy on the held-out set, unpacked: the same function for both runs."""
    from components.training.recipe import evaluate_loss

    return evaluate_loss(model, data, behavior.training, packed=False, pad_id=pad_id)


def run_adaptflow(behavior, out: Path) -> dict:
    from components.methods.io import load_adapter
    from components.models.load import load_model, load_tokenizer
    from components.spec import BaseModelSpec
    from components.training.recipe import prepare_data, train

    base = BaseModelSpec()
    model, tok = load_model(base), load_tokenizer(base)
    record = train(model, tok, behavior, out)
    tuned = load_adapter(load_model(base), out / "adapter")
    data = prepare_data(behavior, tok)
    return {"seconds": record.train_seconds, "tokens": record.train_tokens, "batching": record.batching,
            "checkpointing": record.gradient_checkpointing["enabled"], "eval_loss": eval_loss(tuned, data.eval, behavior, tok.pad_token_id)}


def run_hf_trainer(behavior, out: Path, checkpointing: bool = False) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from components.models.load import load_model, load_tokenizer
    from components.spec import BaseModelSpec
    from components.training.recipe import prepare_data

    base = BaseModelSpec()
    model, tok = load_model(base), load_tokenizer(base)
    data = prepare_data(behavior, tok)
    rows = [{"input_ids": list(e.input_ids), "labels": list(e.labels), "attention_mask": [1] * len(e.input_ids)}
            for e in data.train.examples]
    spec = behavior.adapter
    model = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.resolved_alpha, lora_dropout=spec.dropout,
                                             target_modules=spec.target_modules, task_type="CAUSAL_LM"))
    t = behavior.training
    from components.training.recipe import plan_steps

    warmup = int(t.warmup_ratio * plan_steps(len(rows), t)[1])  # the same whole number of steps our loop warms up
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=t.batch_size, num_train_epochs=t.epochs,
        learning_rate=t.lr, lr_scheduler_type=t.schedule, warmup_steps=warmup, seed=t.seed,
        logging_steps=10, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay,
        # the fair baseline: bf16 mixed precision on a GPU, as our loop's precision policy; the same checkpointing
        bf16=torch.cuda.is_available(), gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    tokens = sum(len(r["input_ids"]) for r in rows) * t.epochs
    return {"seconds": seconds, "tokens": int(tokens), "eval_loss": eval_loss(model, data.eval, behavior, tok.pad_token_id)}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        train, evals = write_data(folder)
        behavior = behavior_spec(train, evals)
        ours = run_adaptflow(behavior, folder / "adaptflow")
        hf = run_hf_trainer(behavior, folder / "hf", checkpointing=ours["checkpointing"])
    loss_gap = abs(ours["eval_loss"] - hf["eval_loss"]) / hf["eval_loss"]
    return {
        "train_tokens_per_s_ratio": round(hf["seconds"] / ours["seconds"], 2),
        "train_adaptflow_tokens_per_s": round(ours["tokens"] / ours["seconds"], 1),
        "train_hf_trainer_tokens_per_s": round(hf["tokens"] / hf["seconds"], 1),
        "train_adaptflow_eval_loss": round(ours["eval_loss"], 4),
        "train_hf_trainer_eval_loss": round(hf["eval_loss"], 4),
        "train_eval_loss_rel_gap": round(loss_gap, 4),
        "train_adaptflow_batching": ours["batching"],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
