"""The built-in model: offline, from the safetensors cache, hash-checked, and it generates."""

from __future__ import annotations

import json
import shutil

import pytest

from components.models import MARKER, _hash_ok, load_model, load_tokenizer, resolve_model
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
