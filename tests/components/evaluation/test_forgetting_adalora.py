"""Forgetting (perplexity on general text) of a registered-style AdaLoRA system, loaded for inference."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter

from adaptflow.system import System
from components.evaluation.arms import forgetting, perplexity
from components.methods.io import save_adapter
from components.methods.registry import apply_method
from components.spec import AdapterSpec, TaskSpec
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adalora_system_measures_forgetting_and_perplexity_matches_the_labels_loss(tiny_llama_dir, tokenizer, tmp_path):
    adapter = TypeAdapter(AdapterSpec).validate_python({"method": "adalora", "init_r": 4, "target_r": 2})
    model = apply_method(make_tiny_llama(tokenizer), adapter, total_steps=10)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn_like(param) * 0.1)
    save_adapter(model, adapter, tmp_path / "adapter")
    spec = TaskSpec.model_validate({"name": "ada", "goal": "behavior", "base_model": {"id": str(tiny_llama_dir)},
                                    "behavior": {"data": {"train": "t.jsonl"}, "adapter": adapter.model_dump()}},
                                   context={"check_exists": False})
    result = forgetting(System("ada@v1", spec, tmp_path / "adapter", None), "The harbor opened in 1871. " * 20)
    assert result["base_ppl"] > 0 and result["adapter_ppl"] > 0 and math.isfinite(result["forgetting"])
    plain = make_tiny_llama(tokenizer)
    ids = tokenizer("The harbor opened in 1871. " * 4, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        oracle = math.exp(float(plain(input_ids=ids, labels=ids).loss))  # the HF loss on one window
    assert perplexity(plain, tokenizer, "The harbor opened in 1871. " * 4) == pytest.approx(oracle, rel=1e-5)


@pytest.mark.parametrize("adapter", [
    {"method": "prompt_tuning", "num_virtual_tokens": 4},
    {"method": "hybrid", "parts": [{"method": "prompt_tuning", "num_virtual_tokens": 4}, {"method": "lora", "r": 2}]},
])
def test_a_soft_prompt_system_measures_forgetting(adapter, tiny_llama_dir, tokenizer, tmp_path):
    """The virtual tokens' logits come first in a prompt-learning model's output (found: a prompt_tuning + lora
    hybrid failed its evaluation with 'input batch_size (264) ... target batch_size (256)')."""
    spec_adapter = TypeAdapter(AdapterSpec).validate_python(adapter)
    model = apply_method(make_tiny_llama(tokenizer), spec_adapter, total_steps=10, tokenizer=tokenizer)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn_like(param) * 0.1)
    save_adapter(model, spec_adapter, tmp_path / "adapter")
    spec = TaskSpec.model_validate({"name": "soft", "goal": "behavior", "base_model": {"id": str(tiny_llama_dir)},
                                    "behavior": {"data": {"train": "t.jsonl"}, "adapter": spec_adapter.model_dump()}},
                                   context={"check_exists": False})
    result = forgetting(System("soft@v1", spec, tmp_path / "adapter", None), "The harbor opened in 1871. " * 60)
    assert result["base_ppl"] > 0 and math.isfinite(result["forgetting"]) and result["adapter_ppl"] != result["base_ppl"]


def test_perplexity_starts_every_window_with_the_tokenizers_bos(builtin_dir):
    """A tokenizer that starts every text with <bos> (Gemma, Llama) gets it at the head of each window, and the
    score is over the text's own tokens: the labels loss of [bos] + window, without the bos's own prediction."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from components.evaluation.arms import leading_special_ids

    tok = AutoTokenizer.from_pretrained(builtin_dir)
    assert leading_special_ids(tok) == []  # SmolLM2 adds nothing: its perplexities are as they were
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                              special_tokens=[(tok.bos_token, bos)])
    assert tok("a")["input_ids"][0] == bos and leading_special_ids(tok) == [bos]
    model = make_tiny_llama(tok)
    seen = []
    model.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(kwargs["input_ids"][0, 0].item()),
                                    with_kwargs=True)
    text = "The harbor opened in 1871. " * 30
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    got = perplexity(model, tok, text, window=64)
    assert len(seen) == math.ceil((ids.shape[1] - 1) / 64) and set(seen) == {bos}
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[1] - 1, 64):
            window = ids[:, start:start + 65]
            logits = model(input_ids=torch.cat([torch.tensor([[bos]]), window], 1)).logits[0, 1:-1]
            nll += float(torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)
