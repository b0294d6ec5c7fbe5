"""The CUDA paths of the precision policy, checkpointing and the generation check (skipped without CUDA).
bench/gpu.py measures the same paths at 1-7B; these tests pin their behaviour on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from components.models.load import load_model
from components.models.precision import resolve_precision
from components.spec import BaseModelSpec, QuantizationSpec
from components.training.recipe import greedy, train
from tests.components.methods.test_methods import behavior

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_precision_loads_the_base_in_the_compute_dtype_straight_onto_the_gpu(base_dir):
    model = load_model(BaseModelSpec(id=str(base_dir)))
    expected = resolve_precision("auto", "cuda").dtype
    assert {p.dtype for p in model.parameters()} == {expected}
    assert {p.device.type for p in model.parameters()} == {"cuda"}


@pytest.mark.parametrize("method", ["lora", "qlora", "prompt_tuning"])
def test_cuda_training_saves_the_adapter_keeps_fp32_adapter_weights_and_records_memory(
        method, base_dir, system_data_file, tokenizer, tmp_path):
    quant = QuantizationSpec(bits=4) if method == "qlora" else None
    model = load_model(BaseModelSpec(id=str(base_dir), quantization=quant))
    record = train(model, tokenizer, behavior(system_data_file, method, gradient_checkpointing=True), tmp_path)
    assert record.precision["device"] == "cuda" and record.precision["compute_dtype"] in ("bf16", "fp16")
    assert record.gradient_checkpointing["enabled"] and record.peak_device_memory_mb > 0
    assert record.generation["passed"] and (tmp_path / "adapter" / "adapter_config.json").exists()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert json.loads((tmp_path / "train_record.json").read_text())["generation"]["passed"] is True


@pytest.mark.parametrize("bits", [None, 4])
def test_untrained_base_passes_the_generation_check_on_16_prompts(bits, base_dir, tokenizer):
    quant = QuantizationSpec(bits=bits) if bits else None
    model = load_model(BaseModelSpec(id=str(base_dir), quantization=quant))
    prompts = [[{"role": "user", "content": f"Ticket {i}: where is order {1000 + 37 * i}?"}] for i in range(16)]
    out = greedy(model, tokenizer, prompts, tolerance=resolve_precision("auto", "cuda").logit_tolerance)
    assert sum(out.agrees) == 16
