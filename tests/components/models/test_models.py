"""The built-in model: offline, from the safetensors cache, hash-checked, and it generates."""

from __future__ import annotations

import json
import shutil

import pytest

from components.models.load import MARKER, _hash_ok, load_model, load_tokenizer, resolve_model
from components.spec import BaseModelSpec

pytestmark = pytest.mark.slow


def test_builtin_model_loads_offline_from_the_cache_and_generates(builtin_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = BaseModelSpec()
    resolved = resolve_model(spec)
    assert resolved.path == builtin_dir and resolved.builtin and len(resolved.weights_hash) == 64
    model, tok = load_model(spec, resolved), load_tokenizer(spec, resolved)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])


def test_cache_hash_check_catches_a_flipped_bit(builtin_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(builtin_dir, copy)
    marker = json.loads((copy / MARKER).read_text())
    marker.pop("verified_stat", None)
    (copy / MARKER).write_text(json.dumps(marker))
    assert _hash_ok(copy)  # full hash, then the stamp is recorded
    assert _hash_ok(copy)  # untouched: the stamp is enough
    with open(copy / "model.safetensors", "r+b") as fh:
        fh.seek(4096)
        byte = fh.read(1)
        fh.seek(4096)
        fh.write(bytes([byte[0] ^ 1]))
    assert not _hash_ok(copy)


def test_quantized_copy_is_cached_verified_and_identical(tiny_llama_dir, tokenizer, tmp_path, monkeypatch):
    """The first 4-bit load writes an NF4 checkpoint under $ADAPTFLOW_HOME; later loads read it (no fp32
    pass), give the same logits, and an altered cache file is caught and rebuilt from the source weights."""
    import torch

    from components.spec import QuantizationSpec

    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path))
    spec = BaseModelSpec(id=str(tiny_llama_dir), quantization=QuantizationSpec(bits=4))
    ids = tokenizer("Is seven even?", return_tensors="pt")

    def logits(model):
        with torch.no_grad():
            return model(**ids).logits

    first = load_model(spec, device="cpu")
    caches = list((tmp_path / "models" / "quantized").iterdir())
    assert len(caches) == 1 and (caches[0] / "adaptflow-quantized.json").exists()
    second = load_model(spec, device="cpu")
    assert second.config._name_or_path == str(caches[0])  # read from the quantized copy
    assert second.is_loaded_in_4bit and torch.equal(logits(first), logits(second))

    weights = caches[0] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    third = load_model(spec, device="cpu")  # caught: quantized again from the source, cache rewritten
    assert third.config._name_or_path != str(caches[0])
    assert torch.equal(logits(first), logits(third))
    assert (caches[0] / "adaptflow-quantized.json").exists()
    assert load_model(spec, device="cpu").config._name_or_path == str(caches[0])
