"""Hardware truth on CPU: the precision policy, gradient checkpointing for every method, a generation check
that cannot lose work, bitsandbytes' CPU kernel chosen on purpose, and the memory estimate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bitsandbytes.nn.modules as bnb_modules
import pytest
import torch
from safetensors.torch import load_file

from components.methods import registry as methods
from components.models.load import load_model, resolve_model
from components.models.precision import resolve_precision
from components.models.quantize import pin_cpu_4bit_kernels
from components.spec import NO_CHECKPOINTING, BaseModelSpec, QuantizationSpec
from components.training.memory import decide_checkpointing, estimate
from components.training.recipe import GenerationCheckError, greedy, train
from tests.components.methods.test_methods import METHODS, behavior
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
LORA_7B_TRAINABLE = 4_194_304  # r=8 on q_proj, v_proj (tests/components/methods/test_methods.py counts it)
# Peaks measured with torch.cuda.max_memory_allocated on one H200, r=8 q,v, rows of 512 tokens (docs/memory.md):
MEASURED_GB = {"qlora_b8_ckpt_bf16": 6.17, "lora_b8_ckpt": 15.11, "lora_b8": 33.1, "lora_b1": 15.5}


def quant(method: str):
    return QuantizationSpec(bits=4) if method == "qlora" else None


# --- the policy ----------------------------------------------------------------------------------


def test_auto_precision_is_fp32_on_cpu_and_explicit_values_win():
    assert resolve_precision("auto", "cpu").dtype == torch.float32
    bf16 = resolve_precision("bf16", "cpu")
    assert bf16.dtype == torch.bfloat16 and bf16.autocast and not bf16.grad_scaler
    assert resolve_precision("fp16", "cpu").grad_scaler
    # a comparison tolerance of a few rounding steps of the compute dtype, not fp32's 1e-3
    assert resolve_precision("fp32", "cpu").logit_tolerance == 1e-3
    assert bf16.logit_tolerance == 4 * 2**-7


def test_bf16_base_trains_fp32_adapter_weights_and_records_the_policy(base_dir, system_data_file, tokenizer, tmp_path):
    model = load_model(BaseModelSpec(id=str(base_dir)), device="cpu", precision="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # loaded in the compute dtype, no fp32 copy
    record = train(model, tokenizer, behavior(system_data_file, "lora", precision="bf16"), tmp_path)
    assert record.precision == {"requested": "bf16", "compute_dtype": "bf16", "device": "cpu"}
    assert all(math_finite(v) for _, v in record.loss_curve)
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    on_disk = json.loads((tmp_path / "train_record.json").read_text())
    assert on_disk["precision"]["compute_dtype"] == "bf16" and on_disk["generation"]["passed"] is True
    assert on_disk["generation"]["compute_dtype"] == "bf16"


def math_finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


# --- gradient checkpointing ----------------------------------------------------------------------


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    folder = out / "adapter"
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "adapter_weights.safetensors"
    return load_file(folder / name)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in NO_CHECKPOINTING])
def test_gradient_checkpointing_trains_every_method_to_the_same_adapter(method, base_dir, system_data_file, tokenizer, tmp_path):
    outs = {}
    for on in (False, True):
        model = load_model(BaseModelSpec(id=str(base_dir), quantization=quant(method)), device="cpu")
        out = tmp_path / f"ckpt-{on}"
        record = train(model, tokenizer, behavior(system_data_file, method, gradient_checkpointing=on), out)
        assert record.gradient_checkpointing["enabled"] is on and record.gradient_checkpointing["why"] == "set in the spec"
        outs[on] = _adapter(out)
    assert outs[True].keys() == outs[False].keys()
    for name, tensor in outs[False].items():  # recomputation changes no number that matters (dropout RNG is replayed)
        torch.testing.assert_close(outs[True][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_prefix_tuning_refuses_checkpointing_and_auto_leaves_it_off(base_dir, system_data_file, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="prefix travels as the KV cache"):
        behavior(system_data_file, "prefix_tuning", gradient_checkpointing=True)
    model = load_model(BaseModelSpec(id=str(base_dir)), device="cpu")
    record = train(model, tokenizer, behavior(system_data_file, "prefix_tuning"), tmp_path)
    assert record.gradient_checkpointing["enabled"] is False and "KV cache" in record.gradient_checkpointing["why"]


def test_auto_checkpointing_follows_the_estimate():
    common = dict(trainable=LORA_7B_TRAINABLE, seq_len=512, compute_bits=16)
    h200 = 141 * 2**30
    qlora_b8 = estimate(LLAMA2_7B, batch_size=8, quant_bits=4, checkpointing=False, **common)
    assert decide_checkpointing("auto", qlora_b8, h200, quantized=True)[0]  # activations outgrow the 4-bit weights
    lora_b1 = estimate(LLAMA2_7B, batch_size=1, quant_bits=None, checkpointing=False, **common)
    assert not decide_checkpointing("auto", lora_b1, h200, quantized=False)[0]
    assert decide_checkpointing("auto", lora_b1, 8 * 2**30, quantized=False)[0]  # an 8 GB card: over 25 %
    assert decide_checkpointing(False, qlora_b8, h200, quantized=True) == (False, "set in the spec")


@pytest.mark.parametrize(("case", "batch", "bits", "ckpt"), [
    ("qlora_b8_ckpt_bf16", 8, 4, True), ("lora_b8_ckpt", 8, None, True), ("lora_b8", 8, None, False),
    ("lora_b1", 1, None, False)])
def test_memory_estimate_is_within_25_percent_of_the_measured_7b_peaks(case, batch, bits, ckpt):
    est = estimate(LLAMA2_7B, trainable=LORA_7B_TRAINABLE, batch_size=batch, seq_len=512, compute_bits=16,
                   quant_bits=bits, checkpointing=ckpt)
    assert abs(est.total_mb / 1024 / MEASURED_GB[case] - 1) < 0.25, est.to_dict()


def test_plan_for_a_7b_qlora_on_a_gpu_turns_checkpointing_on(tmp_path):
    (tmp_path / "llama2-7b").mkdir()
    (tmp_path / "llama2-7b" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                                    "model_type": "llama", **LLAMA2_7B}))
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                   {"role": "assistant", "content": "yo"}]}) + "\n")
    (tmp_path / "spec.yaml").write_text(
        f"name: q7\ngoal: behavior\nbase_model: {{id: {tmp_path / 'llama2-7b'}, quantization: {{bits: 4}}}}\n"
        "behavior:\n  data: {train: train.jsonl}\n  adapter: {method: qlora, r: 8, target_modules: [q_proj, v_proj]}\n"
        "  training: {batch_size: 8, max_seq_len: 512, gradient_checkpointing: auto}\n")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "plan", str(tmp_path / "spec.yaml"), "--workspace",
                          str(tmp_path), "--device", "cuda", "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    est = json.loads(out.stdout)["memory_estimate"]
    assert est["gradient_checkpointing"]["enabled"] and est["compute_dtype"] == "bf16"
    assert abs(est["total_mb"] / 1024 / MEASURED_GB["qlora_b8_ckpt_bf16"] - 1) < 0.25
    assert "kernels" not in out.stderr


# --- the generation check cannot lose work ----------------------------------------------------------


def test_failed_generation_check_keeps_the_adapter_and_says_what_was_compared(
        base_dir, system_data_file, tokenizer, tmp_path, monkeypatch):
    # Re-create peft's real prompt-learning bug (the prefix is dropped by generate) by skipping our fix.
    monkeypatch.setattr(methods, "fix_prompt_learning_generate", lambda model: None)
    model = load_model(BaseModelSpec(id=str(base_dir)), device="cpu")
    with pytest.raises(GenerationCheckError, match="kept at"):
        train(model, tokenizer, behavior(system_data_file, "prefix_tuning"), tmp_path)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    record = json.loads((tmp_path / "train_record.json").read_text())
    assert record["generation"]["passed"] is False and "cache-free forward pass" in record["generation"]["compared"]
    assert record["steps"] == 3 and record["generation"]["failure"]


def test_untrained_nf4_base_agrees_with_its_own_forward_pass(base_dir, tokenizer):
    model = load_model(BaseModelSpec(id=str(base_dir), quantization=QuantizationSpec(bits=4)), device="cpu")
    prompts = [[{"role": "user", "content": f"Question {i}: is {i} even?"}] for i in range(16)]
    out = greedy(model, tokenizer, prompts, tolerance=resolve_precision("auto", "cpu").logit_tolerance)
    assert sum(out.agrees) == 16


# --- bitsandbytes' CPU kernels: chosen, not inherited from the host --------------------------------------


def _quantized(base_dir: Path, host_has_avx512bf16: bool, monkeypatch):
    """Load the 4-bit base as a host with (or without) AVX512-BF16 would: bitsandbytes reads the flag when it
    builds each layer. Forcing it only marks the layers; no bf16 instruction runs unless a layer keeps it."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: host_has_avx512bf16)
    return load_model(BaseModelSpec(id=str(base_dir), quantization=QuantizationSpec(bits=4)), device="cpu")


@pytest.mark.parametrize("host_has_avx512bf16", [False, True])
def test_4bit_layers_use_the_portable_kernel_whatever_the_host(base_dir, tokenizer, host_has_avx512bf16, monkeypatch):
    model = _quantized(base_dir, host_has_avx512bf16, monkeypatch)
    layers = [m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    with torch.no_grad():  # an eval forward without gradients is where bitsandbytes would repack to its bf16 kernel
        model.eval()(input_ids=tokenizer(["hello"], return_tensors="pt")["input_ids"])
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_qlora_training_gives_the_same_adapter_on_either_kind_of_host(base_dir, system_data_file, tokenizer, tmp_path, monkeypatch):
    adapters = []
    for flag in (False, True):
        model = _quantized(base_dir, flag, monkeypatch)
        train(model, tokenizer, behavior(system_data_file, "qlora"), tmp_path / str(flag))
        adapters.append((tmp_path / str(flag) / "adapter" / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]


@pytest.mark.skipif(not __import__("bitsandbytes.functional").functional.has_avx512bf16(),
                    reason="the fused bf16 kernel needs an AVX512-BF16 CPU")
def test_the_fused_bf16_kernel_is_what_moved_the_numbers(base_dir, tokenizer):
    """Why the pin exists, shown on a host that has the kernel: it rounds through bf16 whatever the compute dtype."""
    model = load_model(BaseModelSpec(id=str(base_dir), quantization=QuantizationSpec(bits=4)), device="cpu").eval()
    ids = tokenizer(["The quick brown fox"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        portable = model(input_ids=ids).logits
        pin_cpu_4bit_kernels(model, fused_bf16=True)
        fused = model(input_ids=ids).logits
    assert (fused - portable).abs().max() > 1e-3


def test_no_command_prints_the_bitsandbytes_kernels_warning():
    code = "import components.training.recipe, components.models.load, peft, bitsandbytes"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "kernels" not in out.stderr + out.stdout


# --- local model folders are hashed once per change --------------------------------------------------------


def test_local_model_weights_are_rehashed_only_when_they_change(tmp_path, tokenizer, monkeypatch):
    from components.models import load as models
    from tests.conftest import make_tiny_llama

    folder = tmp_path / "local-model"
    make_tiny_llama(tokenizer).save_pretrained(folder)
    reads = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda path, *a: reads.append(Path(path).name) or real(path, *a))
    spec = BaseModelSpec(id=str(folder))
    first = resolve_model(spec).weights_hash
    assert reads == ["model.safetensors"]
    assert resolve_model(spec).weights_hash == first and len(reads) == 1  # stat stamp unchanged: not re-read
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert resolve_model(spec).weights_hash != first and len(reads) == 2
