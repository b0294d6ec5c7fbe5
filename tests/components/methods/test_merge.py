"""Merging: a float32 model folder, never a merge into 4-bit weights; logit drift reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from components.methods.io import load_adapter
from components.methods.merge import merge_adapter
from components.models.load import load_model
from components.spec import BaseModelSpec, BehaviorSpec, QuantizationSpec
from components.training.recipe import train
from tests.conftest import save_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("merge")
    base = save_tiny_llama(root / "base", tokenizer, tie_word_embeddings=False)
    data = root / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {n} even?"},
                          {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]} for n in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, base, data


def trained_adapter(setup, tokenizer, method: str, bits: int | None = None) -> Path:
    root, base, data = setup
    out = root / f"run-{method}-{bits}"
    if not (out / "adapter").exists():
        spec = BehaviorSpec.model_validate({"data": {"train": str(data), "eval_split": 0},
                                            "adapter": {"method": method},
                                            "training": {"max_steps": 2, "batch_size": 3, "lr": 0.05}})
        quant = QuantizationSpec(bits=bits) if bits else None
        train(load_model(BaseModelSpec(id=str(base), quantization=quant), device="cpu"), tokenizer, spec, out)
    return out / "adapter"


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["Is 10 even?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_lora_merge_saves_a_plain_float32_model(setup, tokenizer, tmp_path):
    _, base, _ = setup
    adapter = trained_adapter(setup, tokenizer, "lora")
    report = merge_adapter(load_model(BaseModelSpec(id=str(base)), device="cpu"), adapter, tmp_path, tokenizer=tokenizer)
    assert not report.dequantized_base and report.max_logit_drift < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    served = load_adapter(load_model(BaseModelSpec(id=str(base)), device="cpu"), adapter)
    assert (logits(merged, tokenizer) - logits(served, tokenizer)).abs().max() < 1e-4
    assert json.loads((tmp_path / "merge_report.json").read_text())["method"] == "lora"


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_merge_dequantizes_first_and_reports_drift(setup, tokenizer, tmp_path, bits):
    _, base, _ = setup
    adapter = trained_adapter(setup, tokenizer, "qlora", bits=bits)
    quantized = load_model(BaseModelSpec(id=str(base), quantization=QuantizationSpec(bits=bits)), device="cpu")
    report = merge_adapter(quantized, adapter, tmp_path, tokenizer=tokenizer, requantize=QuantizationSpec(bits=bits))
    assert report.dequantized_base and report.dtype == "float32"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    # 4-bit: bnb dequantizes and multiplies in float32, so the merged model matches the served one closely.
    # 8-bit: LLM.int8 also rounds the activations (float16, int8) at serving time, so some drift is expected.
    assert report.max_logit_drift < (1e-3 if bits == 4 else 5e-2)
    assert report.requantized_bits == bits and report.requantized_logit_drift is not None


def test_prompt_learning_adapters_are_not_merged(setup, tokenizer, tmp_path):
    _, base, _ = setup
    adapter = trained_adapter(setup, tokenizer, "prompt_tuning")
    with pytest.raises(ValueError, match="nothing to merge; serve the base model with the adapter"):
        merge_adapter(load_model(BaseModelSpec(id=str(base)), device="cpu"), adapter, tmp_path)
