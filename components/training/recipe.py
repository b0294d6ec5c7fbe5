"""Train a behavior adapter: one visible loop (setup -> train -> check -> save), torchtune style.

    data (tokenized, checked before any model load) -> apply the method -> AdamW + warmup/decay
    -> loop: grad-accumulated micro-batches, clip, step, periodic eval, checkpoints
    -> adapter/ (peft save_pretrained) + train_record.json + metrics.json -> generation check

Precision follows `training.precision` (components.models.precision): the base computes in bf16 on a GPU,
fp32 on CPU, trainable weights stay fp32. `training.gradient_checkpointing` recomputes activations
in backward (non-reentrant) when `auto` finds they would not fit comfortably (components.training.memory).
The adapter is saved before the generation check, so a failed check never loses a trained adapter.

The loss is the mean cross-entropy over answer tokens of an optimizer step (summed over its
micro-batches, divided once), computed on answer positions only (`logits_to_keep`), so packed
and padded batches give the same loss. Resume: the newest intact checkpoint in
`out_dir/checkpoints/` restores tensors, optimizer, scheduler, RNG and data position, so a
killed run finishes with the same adapter as an uninterrupted one.

On several processes (`training.distributed`, launched by components.training.distributed) the same loop runs on
every rank: each takes its share of every micro-batch, the loss is divided by the step's answer tokens
summed over all ranks and the gradients are summed over ranks, so the step equals one process's; only
rank 0 evaluates and writes checkpoints, the adapter and the record. Under FSDP (an accelerate config with
`distributed_type: FSDP`) the model and optimizer go through `accelerator.prepare`, FSDP averages the gradients in
`backward`, every rank evaluates, and checkpoints and the adapter are gathered to rank 0 (components.training.sharding).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftMixedModel, PeftModel
from tqdm.auto import tqdm

from components.methods import io as adapter_io
from components.methods import registry as methods
from components.models.precision import Precision, resolve_precision
from components.spec import (
    NO_CHECKPOINTING,
    WEIGHT_METHODS,
    BehaviorSpec,
    TaskSpec,
    TrainingSpec,
    soft_prompt,
)
from components.spec.accelerate import FSDP_METHODS
from components.store.fileio import atomic_write_json, fsync_tree, rename_into_place
from components.training import checkpoint, memory, sharding
from components.training.batching import Batch, collate, eval_batches, micro_batches
from components.training.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    TokenizedSet,
    load_examples,
    prompt_messages,
    render_prompt,
    tokenize_examples,
)
from components.training.ranks import current as current_ranks

Progress = Callable[[int, int, dict], None]
GENERATION_PROMPTS = 4
GENERATION_TOKENS = 8


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient: the run stopped; the last good checkpoint is kept."""


class GenerationCheckError(RuntimeError):
    """`generate` ignores or misapplies the adapter: the adapter (saved) is not shipped. `.result` says
    what was compared."""

    def __init__(self, result: dict):
        super().__init__(result["failure"])
        self.result = result


@dataclass(frozen=True)
class PreparedData:
    train: TokenizedSet
    eval: TokenizedSet | None
    eval_examples: list[Example]
    train_examples: list[Example]


@dataclass
class TrainRecord:
    method: str
    seed: int
    steps: int
    epochs: float
    batching: str  # "packed" or "grouped"
    trainable_params: int
    total_params: int
    trainable_pct: float
    adapter_bytes: int
    wall_seconds: float  # this process: setup, training, eval, checkpoints, save
    train_seconds: float  # time in training steps, all processes of a resumed run
    train_tokens: int
    tokens_per_second: float
    peak_rss_mb: float
    final_loss: float | None
    final_eval_loss: float | None
    resumed_from_step: int | None
    loss_curve: list[list[float]] = field(default_factory=list)  # [step, loss]
    eval_history: list[list[float]] = field(default_factory=list)  # [step, eval loss]
    data: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)  # requested, compute dtype, device
    gradient_checkpointing: dict = field(default_factory=dict)  # requested, enabled, why, memory estimate
    peak_device_memory_mb: float | None = None  # torch.cuda.max_memory_allocated on a GPU
    processes: int = 1  # training processes (components.training.distributed); the global batch is the same
    sharding: dict = field(default_factory=dict)  # FSDP (components.training.sharding): version, rank 0's share of the weights

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_data(behavior: BehaviorSpec, tokenizer) -> PreparedData:
    """Read, check and tokenize the data; needs only the tokenizer, so it runs before any model load."""
    train_rows, eval_rows = load_examples(behavior.data)
    cut = (behavior.training.max_seq_len, behavior.data.over_length)
    train_set = tokenize_examples(train_rows, tokenizer, *cut)
    eval_set = tokenize_examples(eval_rows, tokenizer, *cut) if eval_rows else None
    for split, tokenized in (("train", train_set), ("eval", eval_set)):
        if tokenized is not None and tokenized.stats.over_length:
            done = "dropped" if behavior.data.over_length == "drop" else "truncated"
            print(f"[adaptflow] {tokenized.stats.over_length} {split} examples exceed training.max_seq_len="
                  f"{behavior.training.max_seq_len} tokens and were {done} (behavior.data.over_length)", flush=True)
    return PreparedData(train_set, eval_set, eval_rows, train_rows)


def plan_steps(n_train: int, spec: TrainingSpec) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps); max_steps overrides epochs."""
    per_epoch = max(1, math.ceil(math.ceil(n_train / spec.batch_size) / spec.grad_accum))
    return per_epoch, spec.max_steps or max(1, math.ceil(spec.epochs * per_epoch))


def lr_factor(step: int, total: int, spec: TrainingSpec) -> float:
    warmup = int(spec.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if spec.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - progress if spec.schedule == "linear" else 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _device(model) -> torch.device:
    return next(model.parameters()).device


def batch_loss(model, batch: Batch, precision: Precision | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's answer tokens; logits only where a target exists."""
    device = _device(model)
    precision = precision or resolve_precision("auto", device.type)
    keep = (batch.targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    offset = methods.virtual_token_offset(model)
    inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
    with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.autocast):
        logits = model(**inputs, logits_to_keep=(keep + offset).to(device), use_cache=False).logits
    targets = batch.targets[:, keep].to(device)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def evaluate_loss(model, data: TokenizedSet, spec: TrainingSpec, packed: bool, pad_id: int,
                  precision: Precision | None = None) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(data.examples, spec.batch_size, packed, spec.max_seq_len, pad_id):
        total += batch_loss(model, batch, precision).item()
        count += batch.n_targets
    model.train(was_training)
    return total / max(1, count)


# --- generation check --------------------------------------------------------------------------


@dataclass
class Greedy:
    texts: list[str]
    sequences: list[torch.Tensor]  # generated ids only
    first_scores: list[torch.Tensor]  # logits of the first generated token
    agrees: list[bool] = field(default_factory=list)  # each decode agrees with a cache-free forward pass


def _prompt_text(tokenizer, prompt) -> str:
    return prompt if isinstance(prompt, str) else render_prompt(tokenizer, prompt)


@torch.no_grad()
def greedy(model, tokenizer, prompts: list, max_new_tokens: int = GENERATION_TOKENS, tolerance: float | None = None) -> Greedy:
    """Greedy decodes of `prompts`; with `tolerance`, also whether each agrees with the model's own forward pass."""
    out = Greedy([], [], [])
    model.eval()
    for prompt in prompts:
        ids = tokenizer(_prompt_text(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(_device(model))
        gen = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            output_scores=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
        )
        new = gen.sequences[0, ids.shape[1]:].cpu()
        out.sequences.append(new)
        out.first_scores.append(gen.scores[0][0].float().cpu())
        out.texts.append(tokenizer.decode(new, skip_special_tokens=True))
        if tolerance is not None:
            out.agrees.append(_agrees_with_forward(model, tokenizer, prompt, new, tolerance))
    return out


@torch.no_grad()
def _agrees_with_forward(model, tokenizer, prompt, generated: torch.Tensor, tol: float = 1e-3) -> bool:
    """Each generated token is the argmax, within `tol` x max|logit|, of a plain, cache-free forward pass."""
    ids = tokenizer(_prompt_text(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = torch.cat([ids, generated.unsqueeze(0)], dim=1).to(_device(model))
    n = generated.shape[0]
    logits = model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False).logits[0, -n - 1:-1].float()
    chosen = logits.gather(1, generated.to(logits.device).unsqueeze(1)).squeeze(1)
    return bool((chosen >= logits.max(1).values - tol * logits.abs().max().clamp(min=1)).all())


def generation_check(base_model, tuned_model, tokenizer, prompts: list, *, base_outputs: Greedy | None = None,
                     tolerance: float = 1e-3, dtype: str = "fp32", adapter_dir: Path | None = None) -> dict:
    """Check that `generate` runs, is changed by the adapter, and agrees with the tuned model's own forward
    pass wherever the base model's does. Decoding token by token and one full forward pass round differently
    (1-4 bf16 steps on a GPU, more on a 4-bit base), so a disagreement only counts against the adapter when
    the base, checked the same way at the same `tolerance`, agrees on that prompt. For peft models the base
    is the same model with the adapter disabled; selective/full change the base in place, so pass
    `base_outputs` computed (with `tolerance`) before training. Returns what was compared; raises
    GenerationCheckError with it on a failure (the adapter at `adapter_dir` is kept)."""
    tuned = greedy(tuned_model, tokenizer, prompts, tolerance=tolerance)
    if base_outputs is None:
        if isinstance(tuned_model, PeftModel | PeftMixedModel):
            with methods.adapters_disabled(tuned_model):
                base_outputs = greedy(tuned_model, tokenizer, prompts, tolerance=tolerance)
        else:
            base_outputs = greedy(base_model, tokenizer, prompts, tolerance=tolerance)
    diff = max((t - b).abs().max().item() for t, b in zip(tuned.first_scores, base_outputs.first_scores, strict=True))
    changed = sum(not torch.equal(t, b) for t, b in zip(tuned.sequences, base_outputs.sequences, strict=True))
    base_agrees = base_outputs.agrees or [True] * len(prompts)
    result = {
        "passed": True, "prompts": len(prompts), "max_new_tokens": GENERATION_TOKENS, "compute_dtype": dtype,
        "tolerance": f"{tolerance:.3g} x max|logit|",
        "compared": "greedy generate() (KV cache) against one cache-free forward pass of the same tokens, "
                    "tuned model and base (adapter disabled) alike",
        "base_agrees": sum(base_agrees), "tuned_agrees": sum(tuned.agrees), "changed_outputs": changed,
        "max_first_logit_diff": diff,
        "samples": [{"base": b, "tuned": t} for b, t in zip(base_outputs.texts, tuned.texts, strict=True)],
    }
    kept = f"; the trained adapter is kept at {adapter_dir}" if adapter_dir is not None else ""
    if diff < 1e-5:
        result["passed"] = False
        result["failure"] = (
            f"generate() output is identical to the base model's (max first-token logit diff {diff:.1e}): the adapter "
            f"is ignored at generation or did not train{kept}. Train longer or with a higher training.lr, or use another "
            "adapter.method (e.g. lora)")
    bad = [i for i, (t, b) in enumerate(zip(tuned.agrees, base_agrees, strict=True)) if b and not t]
    if bad and result["passed"]:
        result["passed"] = False
        result["failure"] = (
            f"generate() disagrees with the tuned model's own forward pass on prompts {bad} of {len(prompts)}, where the "
            f"base model agrees (tolerance {tolerance:.3g} x max|logit| in {dtype}): the adapter is applied differently "
            f"during generation than in training{kept}. Use another adapter.method (e.g. lora) or another peft version")
    if not result["passed"]:
        raise GenerationCheckError(result)
    return result


# --- the loop ----------------------------------------------------------------------------------


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def train(
    model, tokenizer, behavior: BehaviorSpec, out_dir: Path, *, progress: Progress | None = None,
    data: PreparedData | None = None, accelerator=None, load_base: Callable[[], object] | None = None,
) -> TrainRecord:
    """Apply `behavior.adapter` to `model` (as `load_model` returns it, in `training.precision`), train, save,
    check. A failed generation check raises GenerationCheckError after the adapter and record are saved.
    With an FSDP `accelerator` (components.training.sharding) the model is sharded after the method is applied, and rank 0
    checks generation on `load_base()` plus the saved adapter, loaded the vanilla peft way."""
    started, spec, out_dir = time.time(), behavior.training, Path(out_dir)
    ranks = current_ranks()  # one process, or this rank of `accelerate launch` (components.training.distributed)
    if spec.batch_size % ranks.world:
        raise ValueError(f"training.batch_size ({spec.batch_size}) does not split over {ranks.world} processes; "
                         f"set it to a multiple of {ranks.world}")
    precision = resolve_precision(spec.precision, _device(model).type)
    sharded = accelerator is not None
    if sharded:
        _check_shardable(behavior, model, precision, load_base)
    data = data or prepare_data(behavior, tokenizer)
    per_epoch, total = plan_steps(len(data.train), spec)
    packed = spec.packing and not soft_prompt(behavior.adapter)  # soft prompts are per row
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [prompt_messages(e) for e in (data.eval_examples or data.train_examples)[:GENERATION_PROMPTS]]
    weights_method = behavior.adapter.method in WEIGHT_METHODS
    tolerance = precision.logit_tolerance
    base_outputs = (greedy(model, tokenizer, prompts, tolerance=tolerance)  # the base changes in place
                    if weights_method and ranks.is_main else None)
    if _device(model).type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # setup: method, precision, checkpointing, optimizer, schedule, resume
    seed_everything(spec.seed)
    model = methods.apply_method(model, behavior.adapter, total_steps=total, tokenizer=tokenizer)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for param in named.values():  # trainable weights stay fp32 whatever the base computes in
        if param.dtype != torch.float32:
            param.data = param.data.float()
    checkpointing = _checkpointing(model, behavior, data, precision, trainable=sum(p.numel() for p in named.values()))
    if checkpointing["enabled"]:
        methods.enable_gradient_checkpointing(model)
    scaler = torch.amp.GradScaler(precision.device, enabled=precision.grad_scaler)
    optimizer = torch.optim.AdamW(list(named.values()), lr=spec.lr, weight_decay=spec.weight_decay)
    if sharded:  # accelerate shards the model and the optimizer state as the launch's config says
        counts = methods.count_parameters(model)  # of the whole model, before its shards
        model, optimizer = sharding.prepare(accelerator, model, optimizer)
        named = sharding.trainable(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, spec))
    state = {"step": 0, "epoch": 0, "index": 0, "tokens": 0, "train_seconds": 0.0, "loss_curve": [], "eval_history": []}
    ckpt_dir = out_dir / "checkpoints"
    if (before := checkpoint.previous_divergence(ckpt_dir)) is not None:
        raise TrainingDivergedError(before)  # never resume silently into the state that diverged
    last = checkpoint.latest_checkpoint(ckpt_dir)
    resumed_from = None
    if last is not None:
        restore = (lambda tensors, optim: sharding.restore(model, optimizer, list(named), tensors, optim)) if sharded else None
        state, method_tensors, method_meta = checkpoint.load_checkpoint(last, params=named, optimizer=optimizer,
                                                                        scheduler=scheduler, restore=restore)
        methods.load_method_state(model, method_tensors, method_meta)
        resumed_from = state["step"]
        print(f"[adaptflow] resuming from {last} (step {resumed_from}/{total})", flush=True)
    eval_every = spec.eval_every or per_epoch
    ckpt_every = spec.checkpoint_every or max(10, total // 5)
    stream = micro_batches(data.train.examples, spec.batch_size, spec.seed, packed, spec.max_seq_len, pad_id,
                           start=(state["epoch"], state["index"]), shard=ranks.shard if ranks.world > 1 else None)
    bar = tqdm(total=total, initial=state["step"], desc=f"train {behavior.adapter.method}", unit="step",
               dynamic_ncols=True, disable=not ranks.is_main)
    run_tokens, run_seconds, first_step = 0, 0.0, state["step"]

    # train
    model.train()
    while state["step"] < total:
        step_start = time.time()
        if ranks.world > 1:  # each rank's dropout draws its own masks, the same after a resume
            torch.manual_seed(spec.seed + 1_000_003 * (state["step"] + 1) + ranks.rank)
        batches = [next(stream) for _ in range(spec.grad_accum)]
        # divide by the answer tokens of the whole step on all ranks: summed over ranks, the gradient is one process's
        n_targets = ranks.sum(sum(b.n_targets for _, _, b in batches if b is not None))[0]
        if sharded:  # FSDP syncs in backward: every rank runs every micro-batch, the last one syncing
            step_loss = _sharded_backward_passes(accelerator, model, batches, n_targets, ranks.world, precision, data,
                                               packed, pad_id, spec)
        else:
            step_loss = _backward_passes(model, batches, n_targets, ranks.world, precision, scaler, spec,
                                       lambda what, last=last: _diverged(state, out_dir, last, what, spec))
        tokens = sum(b.n_tokens for _, _, b in batches if b is not None)
        if ranks.world > 1:
            step_loss, tokens = ranks.sum(step_loss, tokens)
            tokens = int(tokens)
            if not math.isfinite(step_loss):  # every rank sees the same sum, so all stop together
                _diverged(state, out_dir, last, f"training loss is {step_loss}", spec, write=ranks.is_main)
            if not sharded:
                ranks.sum_grads(list(named.values()))
        scaler.unscale_(optimizer)
        if sharded:
            grad_norm = sharding.grad_norm(accelerator, model, spec.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(list(named.values()), spec.max_grad_norm)
        if not torch.isfinite(grad_norm) and not scaler.is_enabled():  # fp16: the scaler skips the step, backs off
            _diverged(state, out_dir, last, f"gradient norm is {grad_norm.item()}", spec, write=ranks.is_main)
        scaler.step(optimizer)
        scaler.update()
        methods.after_optimizer_step(model, state["step"] + 1)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        epoch, index, _ = batches[-1]
        state.update(step=state["step"] + 1, epoch=epoch, index=index + 1)
        run_tokens, run_seconds = run_tokens + tokens, run_seconds + time.time() - step_start
        state["tokens"] += tokens
        state["train_seconds"] += time.time() - step_start
        state["loss_curve"].append([state["step"], step_loss])
        step = state["step"]
        if data.eval is not None and (ranks.is_main or sharded) and (step % eval_every == 0 or step == total):
            # sharded: every rank runs the forward passes (FSDP gathers parameters in them) and gets the same loss
            state["eval_history"].append([step, evaluate_loss(model, data.eval, spec, packed, pad_id, precision)])
            if ranks.is_main:
                bar.write(f"[adaptflow] step {step}/{total}: train loss {step_loss:.4f}, "
                          f"eval loss {state['eval_history'][-1][1]:.4f}")
        full = sharding.gather(model, optimizer, list(named)) if sharded and (step % ckpt_every == 0 or step == total) else None
        if (step % ckpt_every == 0 or step == total) and ranks.is_main:  # the ranks hold the same state
            method_tensors, method_meta = methods.method_state(model)
            params, optim = full if full is not None else (named, optimizer)
            last = checkpoint.save_checkpoint(ckpt_dir, step, params=params, optimizer=optim, scheduler=scheduler,
                                              trainer_state=state, method_tensors=method_tensors, method_meta=method_meta)
            atomic_write_json(out_dir / "metrics.json", {"loss_curve": state["loss_curve"], "eval_history": state["eval_history"]})
        if step % ckpt_every == 0 or step == total:
            ranks.barrier()
        metrics = {"loss": step_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": run_tokens / max(run_seconds, 1e-9),
                   "epoch": epoch + (index + 1) / math.ceil(len(data.train) / spec.batch_size),
                   "eval_loss": state["eval_history"][-1][1] if state["eval_history"] else None,
                   "eta_s": (total - step) * (time.time() - started) / (step - first_step), "tokens": state["tokens"]}
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        bar.update(1)
        if progress is not None:
            progress(step, total, metrics)
    bar.close()

    # save, then check: a failed check keeps the adapter and says what was compared
    adapter_dir = out_dir / "adapter"
    gathered = sharding.trainable_state(model, list(named)) if sharded else None  # a collective: every rank
    shards = sharding.describe(accelerator, model, counts[1]) if sharded else {}
    if sharded and ranks.is_main:  # the trained weights into a fresh, unsharded copy: saved and checked from it
        model = _unsharded(load_base(), behavior, total, tokenizer, gathered)
    if ranks.is_main:
        tmp = out_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        adapter_io.save_adapter(model, behavior.adapter, tmp)
        fsync_tree(tmp)
        rename_into_place(tmp, adapter_dir)  # the folder stays vanilla peft: no marker in it
    ranks.barrier()  # the other ranks wait for rank 0's adapter
    trainable, all_params = counts if sharded else methods.count_parameters(model)
    record = TrainRecord(
        method=behavior.adapter.method, seed=spec.seed, steps=total, epochs=total / per_epoch,
        batching="packed" if packed else "grouped", trainable_params=trainable, total_params=all_params,
        trainable_pct=100 * trainable / all_params, adapter_bytes=_dir_bytes(adapter_dir),
        wall_seconds=time.time() - started, train_seconds=state["train_seconds"], train_tokens=state["tokens"],
        tokens_per_second=state["tokens"] / max(state["train_seconds"], 1e-9), peak_rss_mb=peak_rss_mb(),
        final_loss=state["loss_curve"][-1][1] if state["loss_curve"] else None,
        final_eval_loss=state["eval_history"][-1][1] if state["eval_history"] else None,
        resumed_from_step=resumed_from, loss_curve=state["loss_curve"], eval_history=state["eval_history"],
        data={"train": data.train.stats.to_dict(), "eval": data.eval.stats.to_dict() if data.eval else None},
        generation={"passed": None, "pending": "the generation check runs after the adapter is saved"},
        precision=precision.to_dict(), gradient_checkpointing=checkpointing,
        peak_device_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if precision.device.startswith("cuda") else None,
        processes=ranks.world, sharding=shards,
    )
    if not ranks.is_main:  # rank 0 writes the record and checks generation
        return record
    atomic_write_json(out_dir / "metrics.json", {"loss_curve": state["loss_curve"], "eval_history": state["eval_history"]})
    atomic_write_json(out_dir / "train_record.json", record.to_dict())
    if checkpointing["enabled"] and not sharded:
        methods.disable_gradient_checkpointing(model)
    try:
        record.generation = generation_check(model, model, tokenizer, prompts, base_outputs=base_outputs,
                                             tolerance=tolerance, dtype=precision.name, adapter_dir=adapter_dir)
    except GenerationCheckError as exc:
        record.generation = exc.result
        raise
    finally:
        atomic_write_json(out_dir / "train_record.json", record.to_dict())
    return record


def _unsharded(base, behavior: BehaviorSpec, total: int, tokenizer, trained: dict[str, torch.Tensor]):
    """`base` with the method applied and the gathered trained tensors loaded: what one process would hold after
    training. peft's save_pretrained finds the adapter's tensors by walking its modules, whose names FSDP1 changes,
    and a sharded model generates only with every rank; this copy needs neither."""
    model = methods.apply_method(base, behavior.adapter, total_steps=total, tokenizer=tokenizer)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if names != set(trained):
        raise RuntimeError(f"the gathered FSDP state does not match the method's trainable tensors: "
                           f"{sorted(names ^ set(trained))[:3]}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in trained:
                param.data = trained[name].to(param.device, torch.float32)  # trainable weights stay fp32, as in train()
    return model


def _check_shardable(behavior: BehaviorSpec, model, precision: Precision, load_base) -> None:
    """What the FSDP path runs (validate checks the config; this checks the model it got)."""
    if behavior.adapter.method not in FSDP_METHODS:
        raise ValueError(f"adapter.method {behavior.adapter.method} is not built under FSDP (built: "
                         f"{', '.join(FSDP_METHODS)}); use a config with distributed_type MULTI_GPU")
    if methods.is_quantized(model):
        raise ValueError("a 4/8-bit base (base_model.quantization) under FSDP is not built: bitsandbytes' packed weights "
                         "do not shard; drop the quantization or use distributed_type MULTI_GPU")
    if precision.grad_scaler:
        raise ValueError("fp16 training under FSDP is not built (the loss scaler does not unscale sharded gradients); "
                         "set training.precision to bf16 or fp32")
    if load_base is None:
        raise ValueError("train(accelerator=...) needs load_base (a fresh base for the generation check)")


def _backward_passes(model, batches: list, n_targets: float, world: int, precision: Precision, scaler, spec: TrainingSpec,
                   diverged: Callable[[str], None]) -> float:
    """One optimizer step's forward and backward passes (one process, or a DDP rank, which syncs after them);
    returns this rank's share of the step's loss."""
    total = 0.0
    for _, _, batch in batches:
        loss = batch_loss(model, batch, precision) / max(1, n_targets) if batch is not None else None
        extra = methods.extra_loss(model)
        if extra is not None:
            extra = extra / (spec.grad_accum * world)
            loss = extra if loss is None else loss + extra
        if loss is None:  # this rank's share of the micro-batch is empty
            continue
        if world == 1 and not torch.isfinite(loss):
            diverged(f"training loss is {loss.item()}")
        scaler.scale(loss).backward()
        total += loss.item()
    return total


def _sharded_backward_passes(accelerator, model, batches: list, n_targets: float, world: int, precision: Precision,
                           data: PreparedData, packed: bool, pad_id: int, spec: TrainingSpec) -> float:
    """One optimizer step's forward and backward passes under FSDP; returns this rank's share of the step's loss.
    FSDP averages gradients over ranks, so each rank's loss (divided by the step's answer tokens on all ranks) is
    multiplied by `world`: the average is then the one-process sum. A rank whose share of a micro-batch is empty
    still runs one (its first training example, weighted 0), since FSDP's gathers and reduce-scatters need every rank."""
    total = 0.0
    for i, (_, _, batch) in enumerate(batches):
        empty = batch is None
        if empty:
            batch = collate([data.train.examples[0]], pad_id, spec.max_seq_len, packed)
        sync = i == len(batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss = batch_loss(model, batch, precision) / max(1, n_targets)
            accelerator.backward(loss * (0.0 if empty else float(world)))
        if not empty:
            total += loss.item()
    return total


def _checkpointing(model, behavior: BehaviorSpec, data: PreparedData, precision: Precision, trainable: int) -> dict:
    """Resolve `training.gradient_checkpointing` from the memory estimate for the longest micro-batch."""
    spec = behavior.training
    examples = data.train.examples
    packed = spec.packing and not soft_prompt(behavior.adapter)
    longest = spec.max_seq_len if packed else max((len(e) for e in examples), default=spec.max_seq_len)
    seq = min(spec.max_seq_len, longest) + (getattr(behavior.adapter, "num_virtual_tokens", 0) or 0)
    answer_share = sum(e.n_answer_tokens for e in examples) / max(1, sum(len(e) for e in examples))
    quant = 4 if getattr(model, "is_loaded_in_4bit", False) else 8 if getattr(model, "is_loaded_in_8bit", False) else None
    without = memory.estimate(model.config.to_dict(), trainable=trainable, batch_size=spec.batch_size, seq_len=seq,
                              compute_bits=torch.finfo(precision.dtype).bits, quant_bits=quant, checkpointing=False,
                              answer_share=answer_share)
    if behavior.adapter.method in NO_CHECKPOINTING:  # the spec refuses `true` for these
        enabled, why = False, f"{behavior.adapter.method}: its prefix is the KV cache, which checkpointed layers drop"
    else:
        enabled, why = memory.decide_checkpointing(spec.gradient_checkpointing, without,
                                                   memory.device_memory_bytes(precision.device), quant is not None)
    return {"requested": spec.gradient_checkpointing, "enabled": enabled, "why": why,
            "estimate_without_mb": round(without.total_mb, 1)}


def _diverged(state: dict, out_dir: Path, last: Path | None, what: str, spec: TrainingSpec, write: bool = True) -> None:
    if write:  # rank 0 of several processes, or the only one
        atomic_write_json(out_dir / "metrics.json", {"loss_curve": state["loss_curve"], "eval_history": state["eval_history"],
                                               "diverged_at_step": state["step"] + 1})
        good = checkpoint.record_divergence(out_dir / "checkpoints", state["step"] + 1, what, spec.lr)
    else:
        good = checkpoint.latest_checkpoint(out_dir / "checkpoints", log=lambda _msg: None)
    kept = f"kept the last good checkpoint {good}" if good else "no good checkpoint had been written yet"
    raise TrainingDivergedError(
        f"step {state['step'] + 1}: {what}; the run stopped and {kept}. Lower training.lr from {spec.lr:g} to "
        f"{spec.lr / 4:g} (or training.max_grad_norm), or check the data, then run again"
    )


def train_task(task: TaskSpec, out_dir: Path, *, progress: Progress | None = None) -> TrainRecord:
    """Spec -> adapter: check and tokenize the data with the tokenizer alone, then load the model and train."""
    from components.models.load import load_model, load_tokenizer, resolve_model

    if task.behavior is None:
        raise DataError(f"spec '{task.name}' has no `behavior:` section; add one to train an adapter")
    resolved = resolve_model(task.base_model)
    tokenizer = load_tokenizer(task.base_model, resolved)
    data = prepare_data(task.behavior, tokenizer)  # bad data fails here, before the model is loaded
    model = load_model(task.base_model, resolved, precision=task.behavior.training.precision)
    return train(model, tokenizer, task.behavior, out_dir, progress=progress, data=data)
