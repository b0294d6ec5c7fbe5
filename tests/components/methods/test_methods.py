"""Every adapter method on a tiny Llama: trains, changes generation, saves, loads like vanilla peft."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from components.methods.io import load_adapter
from components.methods.registry import BUILDERS, apply_method, count_parameters, count_parameters_meta
from components.models.load import load_model
from components.spec import (
    WEIGHT_METHODS,
    BaseModelSpec,
    BehaviorSpec,
    HybridSpec,
    LoraSpec,
    QuantizationSpec,
    adapter_class,
    parse_adapter,
)
from components.training.recipe import GenerationCheckError, generation_check, train
from tests.conftest import make_tiny_llama

# Every registered single method (hybrids combine them: tests/components/methods/test_hybrid.py); a new method is tested here
# as soon as it is registered. test_method_registry.py runs a method defined inside a test through the same checks.
METHODS = [m for m in BUILDERS if not issubclass(adapter_class(m), HybridSpec)]
PEFT_METHODS = [m for m in METHODS if m not in WEIGHT_METHODS]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def adapter_spec(method: str, **extra):
    if method == "prompt_tuning":
        extra.setdefault("init_text", "Answer the question")
    return parse_adapter({"method": method, **extra})


def base_spec(base_dir: Path, method: str) -> BaseModelSpec:
    quant = QuantizationSpec(bits=4) if adapter_class(method).needs_quantized_base else None
    return BaseModelSpec(id=str(base_dir), quantization=quant)


def behavior(data_file: Path, method: str, **training) -> BehaviorSpec:
    return BehaviorSpec.model_validate({
        "data": {"train": str(data_file), "eval": str(data_file)},
        "adapter": adapter_spec(method).model_dump(),
        "training": {"max_steps": 3, "batch_size": 4, "lr": 0.05, "warmup_ratio": 0, "seed": 0, **training},
    })


@pytest.fixture(scope="module")
def trained(base_dir, system_data_file, tokenizer, tmp_path_factory):
    """Train each method once per module (lazily) and share (out_dir, record)."""
    cache: dict[str, tuple[Path, object]] = {}

    def get(method: str):
        if method not in cache:
            out = tmp_path_factory.mktemp(f"run-{method}")
            model = load_model(base_spec(base_dir, method), device="cpu")
            cache[method] = out, train(model, tokenizer, behavior(system_data_file, method), out)
        return cache[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_changes_generation(trained, method):
    check_trains_and_changes_generation(trained, method)


def check_trains_and_changes_generation(trained, method: str) -> None:
    out, record = trained(method)
    assert record.steps == 3 and len(record.loss_curve) == 3 and record.method == method
    assert record.generation["changed_outputs"] >= 1, record.generation["samples"]
    assert 0 < record.trainable_params <= record.total_params and record.adapter_bytes > 0
    saved = json.loads((out / "train_record.json").read_text())
    assert saved["trainable_params"] == record.trainable_params and saved["peak_rss_mb"] > 0
    if method in PEFT_METHODS:
        assert (out / "adapter" / "adapter_config.json").exists()
        assert (out / "adapter" / "adapter_model.safetensors").exists()


def ids_for(tokenizer) -> torch.Tensor:
    return tokenizer(["Is 12 even?", "Tell me a story"], padding=True, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("method", [m for m in PEFT_METHODS if not adapter_class(m).needs_quantized_base])
def test_vanilla_peft_loading_gives_the_same_logits(trained, base_dir, tokenizer, method):
    check_vanilla_peft_loading(trained, base_dir, tokenizer, method)


def check_vanilla_peft_loading(trained, base_dir: Path, tokenizer, method: str) -> None:
    out, _ = trained(method)
    ids = ids_for(tokenizer)
    vanilla = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / "adapter").eval()
    ours = load_adapter(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), out / "adapter").eval()
    with torch.no_grad():
        diff = (vanilla(input_ids=ids).logits - ours(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("method", [m for m in METHODS if m in WEIGHT_METHODS])
def test_weight_methods_round_trip_through_safetensors(trained, base_dir, tokenizer, method):
    out, _ = trained(method)
    assert (out / "adapter" / "adapter_weights.safetensors").exists()
    loaded = load_adapter(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), out / "adapter").eval()
    base = load_model(BaseModelSpec(id=str(base_dir)), device="cpu").eval()
    ids = ids_for(tokenizer)
    with torch.no_grad():
        assert not torch.allclose(loaded(input_ids=ids).logits, base(input_ids=ids).logits)


def test_qlora_adapter_loads_on_the_4bit_base(trained, base_dir, tokenizer):
    out, record = trained("qlora")
    quantized = load_model(base_spec(base_dir, "qlora"), device="cpu")
    assert quantized.is_loaded_in_4bit
    tuned = load_adapter(quantized, out / "adapter").eval()
    with torch.no_grad():
        assert torch.isfinite(tuned(input_ids=ids_for(tokenizer)).logits).all()
    assert record.trainable_params == count_parameters(tuned)[0] or record.trainable_params > 0


def test_two_named_adapters_share_one_base_and_switch(trained, base_dir, tokenizer):
    ids = ids_for(tokenizer)
    expected = {}
    for method in ("lora", "dora"):
        single = load_adapter(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), trained(method)[0] / "adapter")
        with torch.no_grad():
            expected[method] = single.eval()(input_ids=ids).logits
    shared = load_adapter(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), trained("lora")[0] / "adapter",
                          adapter_name="lora")
    assert load_adapter(shared, trained("dora")[0] / "adapter", adapter_name="dora") is shared
    for method in ("lora", "dora", "lora"):
        shared.set_adapter(method)
        with torch.no_grad():
            assert (shared.eval()(input_ids=ids).logits - expected[method]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="different peft types.*own copy of the base"):
        load_adapter(shared, trained("ia3")[0] / "adapter", adapter_name="other")


def test_generation_check_catches_generate_ignoring_a_prompt_learning_adapter(trained, base_dir, tokenizer):
    out, record = trained("prefix_tuning")
    tuned = load_adapter(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), out / "adapter")
    prompts = [[{"role": "user", "content": "Is 4 even?"}], [{"role": "user", "content": "Is 7 even?"}]]
    assert generation_check(None, tuned, tokenizer, prompts)["max_first_logit_diff"] > 1e-3
    # Undo the fix: peft's generate then drops the prefix (it writes `past_key_values`, transformers reads `cache`).
    tuned.base_model_prepare_inputs_for_generation = tuned.base_model_prepare_inputs_for_generation.__wrapped__
    tuned._adaptflow_generate_fixed = False
    with pytest.raises(GenerationCheckError, match="identical to the base model"):
        generation_check(None, tuned, tokenizer, prompts)


@pytest.mark.parametrize("method", METHODS)
def test_meta_device_counts_equal_real_counts(base_dir, tokenizer, method):
    check_meta_device_counts(base_dir, tokenizer, method)


def check_meta_device_counts(base_dir: Path, tokenizer, method: str) -> None:
    spec = adapter_spec(method)
    if adapter_class(method).needs_quantized_base:
        real = apply_method(load_model(base_spec(base_dir, method), device="cpu"), spec, total_steps=10, tokenizer=tokenizer)
    else:
        real = apply_method(make_tiny_llama(tokenizer, tie_word_embeddings=False), spec, total_steps=10, tokenizer=tokenizer)
    assert count_parameters_meta(base_dir, spec) == count_parameters(real)


def test_meta_count_of_a_llama2_7b_config_allocates_no_weights(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
    (tmp_path / "config.json").write_text(json.dumps(config))
    before = psutil.Process().memory_info().rss
    counts = count_parameters_meta(tmp_path, LoraSpec(r=8, target_modules=["q_proj", "v_proj"]))
    assert counts == (4_194_304, 6_742_609_920)
    assert psutil.Process().memory_info().rss - before < 2**30  # 27 GB if the weights were materialised


def test_method_errors_name_the_field_and_the_fix(base_dir, tokenizer):
    with pytest.raises(ValueError, match="'qlora' but the base model is not quantized.*quantization: {bits: 4}"):
        apply_method(make_tiny_llama(tokenizer), adapter_spec("qlora"))
    with pytest.raises(ValueError, match=r"adapter.parameters \['lm_bias'\] match no parameter.*e.g. 'norm'"):
        apply_method(make_tiny_llama(tokenizer), adapter_spec("selective", parameters=["lm_bias"]))
    with pytest.raises(ValueError, match="cannot be 4/8-bit"):
        apply_method(load_model(base_spec(base_dir, "qlora"), device="cpu"), adapter_spec("full"))
    with pytest.raises(ValueError, match="rank schedule from the total step count"):
        apply_method(make_tiny_llama(tokenizer), adapter_spec("adalora"))


def test_prompt_tuning_starts_from_the_init_text(tokenizer):
    model = apply_method(make_tiny_llama(tokenizer), adapter_spec("prompt_tuning", num_virtual_tokens=6,
                                                                   init_text="Answer the question"), tokenizer=tokenizer)
    ids = tokenizer("Answer the question", add_special_tokens=False)["input_ids"]
    ids = (ids * 6)[:6]
    soft = model.prompt_encoder["default"].embedding.weight
    assert torch.equal(soft, model.word_embeddings.weight[ids])


def test_selective_trains_only_the_named_parameters(tokenizer):
    model = apply_method(make_tiny_llama(tokenizer), adapter_spec("selective", parameters=["norm"]))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("norm" in n for n in trained)
    assert count_parameters(model)[0] == sum(p.numel() for n, p in model.named_parameters() if n in trained)
