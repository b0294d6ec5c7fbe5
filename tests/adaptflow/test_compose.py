"""`adaptflow compose` on two registered tiny LoRA systems: the composed adapter is peft's (oracle: 'cat'
is exactly the weighted sum of the sources' ΔW), loads in vanilla peft, is scored beside each source on
that source's evaluation set (weights 1,0 reproduce the first source exactly) and registers with lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from typer.testing import CliRunner

from components.methods.io import save_adapter
from components.methods.registry import apply_method
from components.models.load import load_model
from components.registry import Registry, manifest_base
from components.spec import BaseModelSpec, TaskSpec
from flows.cli import app
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer, base_dir):
    """A tiny base, two LoRA systems (a, b) and one IA3 system registered, each with its own eval set."""
    root = tmp_path_factory.mktemp("compose")
    (root / "train.jsonl").write_text("")
    reg = Registry(root / "registry")
    base = {"id": str(base_dir), "revision": None, "weights_hash": "w", "path": str(base_dir)}
    for i, (name, adapter) in enumerate([("a", {"method": "lora", "r": 4}), ("b", {"method": "lora", "r": 4}),
                                         ("c", {"method": "ia3"})]):
        qa = root / f"qa-{name}.jsonl"
        qa.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{name}: is {n} even?"}],
                                          "answer": "yes" if n % 2 == 0 else "no"}) + "\n" for n in range(4)))
        spec = TaskSpec.model_validate({
            "name": name, "goal": "behavior", "base_model": {"id": str(base_dir)},
            "behavior": {"data": {"train": str(root / "train.jsonl")}, "adapter": adapter},
            "evaluation": {"data": str(qa), "max_new_tokens": 3},
        }, context={"check_exists": False})
        model = apply_method(make_tiny_llama(tokenizer, tie_word_embeddings=False), spec.behavior.adapter)
        torch.manual_seed(10 + i)
        with torch.no_grad():
            for param in (p for p in model.parameters() if p.requires_grad):
                param.add_(torch.randn_like(param) * 0.5)
        staging = root / f"staging-{name}"
        save_adapter(model, spec.behavior.adapter, staging / "adapter")
        manifest = manifest_base(spec, base_model=base)
        manifest["volatile"] = {"base_model_path": manifest["base_model"].pop("path")}  # as flows.pipeline.publish does
        reg.publish(name, staging, manifest)
    return root, reg, base_dir


def deltas(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), adapter_dir)
    return {n: m.get_delta_weight("default").detach() for n, m in model.base_model.model.named_modules()
            if hasattr(m, "get_delta_weight") and "default" in getattr(m, "scaling", {})}


def test_cat_composition_is_the_weighted_sum_and_reproduces_a_source_at_weight_one(world):
    root, reg, base_dir = world
    result = CliRunner().invoke(app, ["compose", "mix", "--from", "a@v1", "b@v1", "--how", "cat",
                                      "--weights", "1,0", "--root", str(reg.root)])
    assert result.exit_code == 0, result.output
    version = reg.open("mix@v1")  # verified
    assert [s["ref"] for s in version.manifest["composed_from"]] == ["a@v1", "b@v1"]
    assert version.manifest["composed_from"][0]["content_digest"] == reg.open("a@v1").manifest["content_digest"]
    assert version.manifest["spec"]["compose"]["how"] == "cat"
    got, want = deltas(base_dir, version.path / "adapter"), deltas(base_dir, reg.open("a@v1").path / "adapter")
    assert set(got) == set(want) and all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)
    report = json.loads((version.path / "eval" / "compose.json").read_text())
    row_a, row_b = report["rows"]
    assert row_a["source"] == "a@v1" and row_a["arm"] == "adapter" and row_a["items"] == 4
    assert row_a["composed_metrics"] == row_a["source_metrics"]  # weight 1 on a: the same predictions
    assert set(row_b["composed_metrics"]) == set(row_b["source_metrics"])
    assert "| a@v1 | 4 | adapter |" in result.output and "registered mix@v1" in result.output


def test_cat_with_two_weights_adds_the_updates(world):
    root, reg, base_dir = world
    spec = root / "mix2.yaml"
    spec.write_text("name: mix2\ncompose: {sources: [a@v1, b@v1], how: cat, weights: [0.7, 0.3]}\n")
    result = CliRunner().invoke(app, ["compose", "ignored", "--spec", str(spec), "--root", str(reg.root)])
    assert result.exit_code == 0, result.output
    got = deltas(base_dir, reg.open("mix2@v1").path / "adapter")
    a, b = deltas(base_dir, reg.open("a@v1").path / "adapter"), deltas(base_dir, reg.open("b@v1").path / "adapter")
    assert all(torch.allclose(got[k], 0.7 * a[k] + 0.3 * b[k], atol=1e-5) for k in got)


def test_ties_runs_and_refusals_name_the_fix(world):
    root, reg, base_dir = world
    runner = CliRunner()
    ties = runner.invoke(app, ["compose", "tied", "--from", "a@v1", "b@v1", "--how", "ties", "--root", str(reg.root)])
    assert ties.exit_code == 0, ties.output
    tied = reg.open("tied@v1")
    PeftModel.from_pretrained(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), tied.path / "adapter")
    assert set(tied.manifest["metrics"]) >= {"accuracy@a", "accuracy@a:source", "accuracy@b", "accuracy@b:source"}
    ia3 = runner.invoke(app, ["compose", "bad", "--from", "a@v1", "c@v1", "--root", str(reg.root)])
    assert ia3.exit_code == 1 and "c@v1 has adapter method 'ia3'; compose merges LoRA adapters" in ia3.output
    one = runner.invoke(app, ["compose", "bad", "--from", "a@v1", "--weights", "1", "--root", str(reg.root)])
    assert one.exit_code == 1 and "at least 2" in one.output
