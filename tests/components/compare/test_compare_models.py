"""compare.base_models: a model axis for the method sweep, on two tiny random Llamas of different sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.compare import expand_variants
from components.methods.registry import count_parameters_meta
from components.models.load import load_model
from components.spec import TaskSpec
from components.training.recipe import train
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tokenizer) -> list[Path]:
    out = []
    for name, hidden in (("tiny-64", 64), ("tiny-128", 128)):
        folder = tmp_path_factory.mktemp(name)
        make_tiny_llama(tokenizer, hidden_size=hidden, intermediate_size=2 * hidden).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out.append(folder)
    return out


def test_every_method_runs_once_per_base_model_and_measures_per_base(bases, tokenizer, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Is {n} even?"},
                                                     {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]})
                            + "\n" for n in range(8)))
    spec = TaskSpec.model_validate({
        "name": "sizes", "goal": "behavior", "base_model": {"id": str(bases[0])},
        "behavior": {"data": {"train": str(data)}, "training": {"max_steps": 2, "batch_size": 4, "lr": 0.01}},
        "compare": {"methods": ["lora", "ia3"], "base_models": [str(b) for b in bases]},
    }, context={"check_exists": False})
    variants = expand_variants(spec)
    assert [v.id for v in variants] == [f"{b.name}-{m}" for b in bases for m in ("lora", "ia3")]
    assert [v.spec.base_model.id for v in variants] == [str(b) for b in bases for _ in range(2)]
    assert all(any("compare.base_models" in n for n in v.derived) for v in variants)
    counts = {}
    for v in variants:
        model = load_model(v.spec.base_model, device="cpu")
        record = train(model, tokenizer, v.spec.behavior, tmp_path / v.id)
        assert (record.trainable_params, record.total_params) == count_parameters_meta(Path(v.spec.base_model.id),
                                                                                       v.spec.behavior.adapter)
        counts[v.id] = record.trainable_params
    small, large = (b.name for b in bases)
    assert counts[f"{large}-lora"] == 2 * counts[f"{small}-lora"]  # r x (in + out) doubles with the width
    assert counts[f"{large}-ia3"] > counts[f"{small}-ia3"]


def _result(vid: str, base: float, tuned: float):
    from components.compare.selection import VariantResult

    arms = {"base": {"accuracy": base, "exact_match": base}, "adapter": {"accuracy": tuned, "exact_match": tuned}}
    record = {"trainable_params": 1000, "total_params": 10_000, "trainable_pct": 10.0, "train_seconds": 5.0,
              "tokens_per_second": 100.0, "peak_rss_mb": 500.0, "adapter_bytes": 4096}
    return VariantResult(vid, "lora", f"t--{vid}@v1", {"arms": arms, "main_arm": "adapter", "items": 10}, record,
                         adapter={"method": "lora"})


def test_a_model_axis_shows_each_variants_own_base_score():
    from components.compare import build_report, render_markdown

    shared = render_markdown(build_report("t", [_result("a-lora", 0.1, 0.8), _result("b-lora", 0.1, 0.9)], "best_score"))
    assert "Without an adapter: base 0.100." in shared and "accuracy (base)" not in shared
    own = render_markdown(build_report("t", [_result("a-lora", 0.1, 0.8), _result("b-lora", 0.4, 0.9)], "best_score"))
    assert "Without an adapter: each variant's own base model, in the `accuracy (base)` column." in own
    assert "| a-lora | lora | 1,000 | 10% | 0.00391 | 5 | 100 | 500 | 0.100 | 0.800 |" in own
    assert "| b-lora | lora | 1,000 | 10% | 0.00391 | 5 | 100 | 500 | 0.400 | 0.900 |" in own
