"""`components.methods.inspect` against peft's own ΔW (get_delta_weight on the loaded model), trained tiny adapters,
and the registry: the inspection is published as `<name>--inspect`, verified, and content-addressed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from pydantic import TypeAdapter
from safetensors.torch import load_file
from typer.testing import CliRunner

from components.methods.inspect import (
    Inspection,
    ModuleStat,
    column_label,
    grid,
    inspect_adapter,
    low_rank_singular_values,
    rank_stats,
    write_heatmap,
)
from components.methods.io import load_adapter
from components.models.load import load_model
from components.registry import Registry, manifest_base
from components.spec import AdapterSpec, BaseModelSpec, BehaviorSpec
from components.training.recipe import train

ADAPTERS = TypeAdapter(AdapterSpec)
pytestmark = pytest.mark.usefixtures("one_thread")
DELTA_METHODS = ["lora", "dora", "adalora", "loha", "lokr"]


def _behavior(data_file: Path, method: str, steps: int) -> BehaviorSpec:
    extra = {"init_r": 6, "target_r": 2} if method == "adalora" else {}
    if method in {"selective"}:
        extra = {"parameters": ["self_attn.q_proj"]}
    return BehaviorSpec.model_validate({
        "data": {"train": str(data_file), "eval": str(data_file)},
        "adapter": ADAPTERS.validate_python({"method": method, **extra}).model_dump(),
        "training": {"max_steps": steps, "batch_size": 4, "lr": 0.05, "warmup_ratio": 0, "seed": 0},
    })


@pytest.fixture(scope="module")
def trained(base_dir, data_file, tokenizer, tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in cache:
            out = tmp_path_factory.mktemp(f"run-{method}")
            model = load_model(BaseModelSpec(id=str(base_dir)), device="cpu")
            train(model, tokenizer, _behavior(data_file, method, 10 if method == "adalora" else 3), out)
            cache[method] = out / "adapter"
        return cache[method]

    return get


def _peft_deltas(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The oracle: ΔW from peft's own layers of the adapter loaded with vanilla PeftModel."""
    model = PeftModel.from_pretrained(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), adapter_dir)
    out = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "scaling", {}):
            out[name] = module.get_delta_weight("default").detach().double()
    return out


@pytest.mark.parametrize("method", DELTA_METHODS)
def test_norms_and_ranks_match_peft_delta_weight_without_the_base(trained, base_dir, method):
    adapter_dir = trained(method)
    ins = inspect_adapter(adapter_dir)  # no base model given
    oracle = _peft_deltas(base_dir, adapter_dir)
    assert {s.name for s in ins.modules} == set(oracle) and len(oracle) == 4  # 2 layers x q_proj, v_proj
    for stat in ins.modules:
        delta = oracle[stat.name]
        assert stat.norm == pytest.approx(float(delta.norm()), rel=1e-4, abs=1e-7), stat.name
        erank, rank90, top = rank_stats(torch.linalg.svdvals(delta))
        assert stat.effective_rank == pytest.approx(erank, rel=1e-3, abs=1e-3) and stat.rank90 == rank90
        kept = len(stat.singular_values)  # a rank-r product has r singular values; the full SVD adds ~1e-9 ones
        assert stat.singular_values == pytest.approx(top[:kept], rel=1e-3, abs=1e-6) and max(top[kept:] or [0]) < 1e-5
        assert stat.layer in (0, 1) and stat.module in ("self_attn.q_proj", "self_attn.v_proj")
    assert any(s.norm > 0 for s in ins.modules)


def test_adalora_reports_the_final_rank_allocation(trained):
    adapter_dir = trained("adalora")
    ins = inspect_adapter(adapter_dir)
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    stored = {k.removeprefix("base_model.model.").removesuffix(".lora_E"): v.shape[0]
              for k, v in saved.items() if k.endswith("lora_E")}
    assert ins.rank_allocation == stored
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["rank_pattern"], "10 steps with tinit 2 and tfinal 3 must have run the allocator"
    assert sum(stored.values()) < 6 * len(stored)  # AdaLoRA pruned some of the 6 initial ranks
    assert "AdaLoRA kept" in ins.notes[0]


def test_ia3_spread_is_the_scaling_vectors(trained):
    adapter_dir = trained("ia3")
    ins = inspect_adapter(adapter_dir)
    saved = {k.removeprefix("base_model.model.").removesuffix(".ia3_l"): v.double().flatten()
             for k, v in load_file(adapter_dir / "adapter_model.safetensors").items()}
    assert {s.name for s in ins.modules} == set(saved)
    for stat in ins.modules:
        vec = saved[stat.name]
        assert stat.norm == pytest.approx(float((vec - 1).norm()), rel=1e-6)
        assert stat.spread["min"] <= stat.spread["mean"] <= stat.spread["max"]
        assert stat.spread["std"] == pytest.approx(float(vec.std(unbiased=False)), abs=1e-6)
    assert max(s.norm for s in ins.modules) > 0  # training moved l away from 1


def test_prompt_tuning_reports_per_token_norms(trained, base_dir, tokenizer):
    adapter_dir = trained("prompt_tuning")
    ins = inspect_adapter(adapter_dir)
    model = load_adapter(load_model(BaseModelSpec(id=str(base_dir)), device="cpu"), adapter_dir)
    vectors = model.get_prompt_embedding_to_save("default").double()
    per_token = [s for s in ins.modules if s.name.startswith("prompt.token")]
    assert [s.norm for s in per_token] == pytest.approx([float(v.norm()) for v in vectors], rel=1e-6)


def test_selective_reads_the_base_tensors_not_the_model(trained, base_dir):
    adapter_dir = trained("selective")
    with pytest.raises(ValueError, match="base_model.path"):
        inspect_adapter(adapter_dir)
    ins = inspect_adapter(adapter_dir, base_dir)
    base = load_file(base_dir / "model.safetensors")
    tuned = load_file(adapter_dir / "adapter_weights.safetensors")
    for stat in ins.modules:
        key = stat.name + ".weight"
        assert stat.norm == pytest.approx(float((tuned[key].double() - base[key].double()).norm()), rel=1e-5)


def test_low_rank_singular_values_equal_the_full_svd():
    torch.manual_seed(0)
    b, a = torch.randn(48, 5), torch.randn(5, 80)
    assert low_rank_singular_values(b, a).tolist() == pytest.approx(torch.linalg.svdvals((b @ a).double()).tolist()[:5])


def test_inspect_command_registers_a_verified_derived_version(trained, base_dir, tmp_path):
    from flows.cli import app

    reg = Registry(tmp_path / "registry")
    staging = tmp_path / "staging"
    (staging / "adapter").mkdir(parents=True)
    for f in trained("lora").iterdir():
        (staging / "adapter" / f.name).write_bytes(f.read_bytes())
    spec = {"name": "tiny", "base_model": {"id": str(base_dir)}}
    base = {"id": str(base_dir), "revision": None, "weights_hash": None, "path": str(base_dir)}
    manifest = manifest_base(spec, base_model=base)
    manifest["volatile"] = {"base_model_path": manifest["base_model"].pop("path")}  # as flows.pipeline.publish does
    source = reg.publish("tiny", staging, manifest)

    runner = CliRunner()
    first = runner.invoke(app, ["inspect", "tiny@v1", "--root", str(reg.root)])
    assert first.exit_code == 0, first.output
    assert "registered tiny--inspect@v1 (inspects tiny@v1)" in first.output and "q_proj" in first.output
    derived = reg.open("tiny--inspect@v1")  # verified against its manifest
    assert derived.manifest["inspects"]["ref"] == "tiny@v1"
    assert derived.manifest["inspects"]["content_digest"] == source.manifest["content_digest"]
    assert {"inspection.json", "inspection.md", "heatmap.png"} <= set(derived.files)
    assert (derived.path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reg.open("tiny@v1")  # the source version is untouched: still verifies

    again = runner.invoke(app, ["inspect", "tiny@v1", "--root", str(reg.root)])
    assert "already registered (identical inspection) tiny--inspect@v1" in again.output
    missing = runner.invoke(app, ["inspect", "nope@v1", "--root", str(reg.root)])
    assert missing.exit_code == 1 and "no task named 'nope'" in missing.output


def test_heatmap_columns_keep_the_hybrid_part(tmp_path):
    """Two hybrid parts on one module are two columns; their labels say which part (found on the built-in model:
    a lora+loha heatmap read `q_proj, v_proj, o_proj`, the parts gone)."""
    stats = [ModuleStat(f"{part}:model.layers.{layer}.self_attn.q_proj", layer, f"{part}:self_attn.q_proj", 1.0 + layer)
             for part in ("part0-lora", "part1-loha") for layer in range(2)]
    ins = Inspection("hybrid", "LORA+LOHA", "‖ΔW‖_F per part", stats)
    _, modules, values = grid(ins)
    assert [column_label(m) for m in modules] == ["part0-lora:q_proj", "part1-loha:q_proj"]
    assert values == [[1.0, 1.0], [2.0, 2.0]]
    assert column_label("mlp.down_proj") == "down_proj" and column_label("prompt") == "prompt"
    png = write_heatmap(ins, tmp_path / "heatmap.png", "t@v1: hybrid")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
