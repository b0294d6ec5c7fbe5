"""The builtin reader's weights ship in the package: a first knowledge run on the built-in base trains nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from components.spec import TaskSpec
from components.training import reader

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(tmp_path, **knowledge) -> TaskSpec:
    (tmp_path / "docs").mkdir(exist_ok=True)
    return TaskSpec.model_validate({"name": "k", "goal": "knowledge",
                                    "knowledge": {"documents": str(tmp_path / "docs"), **knowledge}})


def test_the_shipped_reader_matches_the_built_in_base_and_loads_in_vanilla_peft(tmp_path):
    import torch
    from peft import PeftModel

    from components.models.load import load_model, resolve_model

    record = reader.shipped_record(spec(tmp_path))
    assert record is not None, "SHIPPED.json must match the built-in base, reader.jsonl and RECIPE"
    assert record["recipe"] == reader.RECIPE and record["base_weights_hash"]
    assert reader.shipped_record(spec(tmp_path, reader="none")) is None
    done = reader.copy_shipped(record, tmp_path / "stage")
    assert done["shipped"] is True and done["steps"] > 0
    base_spec = spec(tmp_path).base_model
    base = load_model(base_spec, resolve_model(base_spec))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        plain = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(base, str(tmp_path / "stage" / "adapter"))
        read = model(input_ids=ids).logits
    assert not torch.allclose(plain, read)  # trained weights, not an identity adapter


def test_a_changed_shipped_file_is_refused_by_name(tmp_path, monkeypatch):
    copy = tmp_path / "shipped"
    shutil.copytree(reader.shipped_dir(), copy)
    monkeypatch.setattr(reader, "shipped_dir", lambda: copy)
    record = json.loads((copy / reader.SHIPPED_MARKER).read_text())
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(reader.ShippedReaderError, match="adapter_model.safetensors"):
        reader.copy_shipped(record, tmp_path / "stage")
    assert not (tmp_path / "stage" / "adapter").exists()


def test_an_edited_reader_data_set_trains_instead(tmp_path, monkeypatch):
    edited = tmp_path / "reader.jsonl"
    edited.write_text(reader.reader_data().read_text() + "\n")
    monkeypatch.setattr(reader, "reader_data", lambda: edited)
    assert reader.shipped_record(spec(tmp_path)) is None
