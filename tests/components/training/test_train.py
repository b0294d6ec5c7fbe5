"""The training loop: resume after a kill, determinism, divergence, accumulation, schedule, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.spec import BehaviorSpec, TrainingSpec
from components.training import checkpoint
from components.training.recipe import TrainingDivergedError, lr_factor, train
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {n} even?" + " really" * (n % 3)},
                          {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]} for n in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def behavior(data_file: Path, **training) -> BehaviorSpec:
    return BehaviorSpec.model_validate({
        "data": {"train": str(data_file), "eval": str(data_file)},
        "adapter": {"method": "lora", "r": 4, "dropout": 0.1},  # dropout: the RNG state must resume too
        "training": {"max_steps": 6, "batch_size": 2, "grad_accum": 2, "lr": 0.01, "checkpoint_every": 2,
                     "eval_every": 3, "seed": 3, "packing": True, **training},
    })


def adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, data_file):
    """Uninterrupted runs, packed and length-grouped: (out_dir, record, progress calls)."""
    out = {}
    for packing in (True, False):
        folder, calls = tmp_path_factory.mktemp(f"full-run-{packing}"), []
        record = train(make_tiny_llama(tokenizer), tokenizer, behavior(data_file, packing=packing), folder,
                       progress=lambda step, total, metrics, calls=calls: calls.append((step, total, metrics)))
        out[packing] = folder, record, calls
    return out


@pytest.fixture
def uninterrupted(runs):
    return runs[True]


@pytest.mark.parametrize("packing", [True, False])
def test_killed_run_resumes_from_the_last_complete_checkpoint_to_the_same_adapter(
    tmp_path, tokenizer, data_file, runs, packing
):
    uninterrupted = runs[packing]

    def kill_at_5(step, total, metrics):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(make_tiny_llama(tokenizer), tokenizer, behavior(data_file, packing=packing), tmp_path, progress=kill_at_5)
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint.complete_checkpoints(ckpts)] == ["step-000002", "step-000004"]
    torn = ckpts / "step-000005"  # killed while writing: no complete.json
    torn.mkdir()
    (torn / "trainable.safetensors").write_bytes(b"\0" * 10)
    corrupt = ckpts / "step-000006"  # complete.json present, but a file changed after it was written
    corrupt.mkdir()
    (corrupt / "trainable.safetensors").write_bytes(b"x")
    (corrupt / "complete.json").write_text(json.dumps({"step": 6, "files": {"trainable.safetensors": "0" * 64}}))

    record = train(make_tiny_llama(tokenizer), tokenizer, behavior(data_file, packing=packing), tmp_path)
    assert record.resumed_from_step == 4 and record.steps == 6
    expected, got = adapter_tensors(uninterrupted[0]), adapter_tensors(tmp_path)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert record.loss_curve == uninterrupted[1].loss_curve


def test_same_seed_twice_gives_identical_adapter_bytes(tmp_path, tokenizer, data_file, uninterrupted):
    train(make_tiny_llama(tokenizer), tokenizer, behavior(data_file), tmp_path)
    first = (uninterrupted[0] / "adapter" / "adapter_model.safetensors").read_bytes()
    for file in (uninterrupted[0] / "adapter").iterdir():
        assert (tmp_path / "adapter" / file.name).read_bytes() == file.read_bytes(), file.name
    other = tmp_path / "other-seed"
    train(make_tiny_llama(tokenizer), tokenizer, behavior(data_file, seed=4), other)
    assert (other / "adapter" / "adapter_model.safetensors").read_bytes() != first


def test_record_metrics_and_progress(runs):
    out, record, calls = runs[True]
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5, 6] and all(c[1] == 6 for c in calls)
    assert {"loss", "lr", "tokens_per_s", "eval_loss", "eta_s"} <= set(calls[-1][2]) and calls[-1][2]["eta_s"] == 0
    saved = json.loads((out / "train_record.json").read_text())
    for key in ("trainable_params", "trainable_pct", "adapter_bytes", "wall_seconds", "tokens_per_second",
                "peak_rss_mb", "loss_curve", "eval_history", "steps", "seed"):
        assert key in saved
    assert [s for s, _ in record.eval_history] == [3, 6] and saved["seed"] == 3
    assert json.loads((out / "metrics.json").read_text())["loss_curve"] == saved["loss_curve"]
    assert record.batching == "packed" and runs[False][1].batching == "grouped" and record.tokens_per_second > 0
    assert 0 < record.trainable_pct < 100


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tokenizer, data_file):
    model = make_tiny_llama(tokenizer)
    calls = [0]

    def poison(module, inputs, output):
        if module.training:
            calls[0] += 1
            if calls[0] > 6:  # 2 micro-batches per step: step 4 gets NaN
                return output * float("nan")
        return output

    model.model.embed_tokens.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match=r"step 4: training loss is nan.*step-000002.*Lower training.lr"):
        train(model, tokenizer, behavior(data_file), tmp_path)
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints").name == "step-000002"
    assert not (tmp_path / "adapter").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["diverged_at_step"] == 4


def test_grad_accumulation_matches_one_big_batch(tmp_path, tokenizer, data_file):
    no_dropout = {"adapter": {"method": "lora", "r": 4, "dropout": 0.0}}
    runs = {}
    for name, (batch, accum) in {"accum": (2, 2), "big": (4, 1)}.items():
        spec = behavior(data_file, batch_size=batch, grad_accum=accum, max_steps=2)
        spec = spec.model_copy(update={"adapter": BehaviorSpec.model_validate({**no_dropout, "data": spec.data}).adapter})
        train(make_tiny_llama(tokenizer), tokenizer, spec, tmp_path / name)
        runs[name] = adapter_tensors(tmp_path / name)
    assert all(torch.allclose(runs["accum"][k], runs["big"][k], atol=1e-6) for k in runs["big"])


def test_warmup_then_cosine_or_linear_decay():
    spec = TrainingSpec(warmup_ratio=0.1, schedule="cosine")
    factors = [lr_factor(s, 100, spec) for s in range(100)]
    assert factors[0] < factors[5] < factors[9] <= 1.0
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5, abs=0.01)
    assert factors[99] < 0.01 and all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    linear = TrainingSpec(warmup_ratio=0.0, schedule="linear")
    assert lr_factor(50, 100, linear) == pytest.approx(0.5)
    assert math.isclose(lr_factor(7, 100, TrainingSpec(schedule="constant", warmup_ratio=0)), 1.0)


@pytest.mark.slow
def test_real_model_adapter_loads_with_vanilla_peft(tmp_path, builtin_dir, tokenizer):
    """The built-in model: 2 LoRA steps on the triage data; plain peft loading gives our logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from components.methods.io import load_adapter
    from components.models.load import load_model
    from components.spec import BaseModelSpec

    lines = (Path(__file__).resolve().parents[3] / "specs/data/triage/train.jsonl").read_text().splitlines()[:8]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    spec = BehaviorSpec.model_validate({"data": {"train": str(data), "eval_split": 0},
                                        "training": {"max_steps": 2, "batch_size": 4, "lr": 1e-3}})
    record = train(load_model(BaseModelSpec(), device="cpu"), tokenizer, spec, tmp_path / "run")
    assert record.steps == 2 and record.generation["max_first_logit_diff"] > 0
    ids = tokenizer(["My parcel never arrived."], return_tensors="pt")["input_ids"]
    vanilla = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_dir), tmp_path / "run" / "adapter")
    ours = load_adapter(load_model(BaseModelSpec(), device="cpu"), tmp_path / "run" / "adapter")
    with torch.no_grad():
        assert (vanilla.eval()(input_ids=ids).logits - ours.eval()(input_ids=ids).logits).abs().max() < 1e-5
