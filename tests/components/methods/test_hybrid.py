"""Hybrid adapters on a tiny Llama: both shapes train together, save one vanilla-peft folder per part, reload
as trained, serve and register; the oracle is each part loaded and merged with vanilla peft, one after another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file

from adaptflow.system import System, load_system
from components.compare import expand_variants
from components.methods.inspect import inspect_adapter
from components.methods.io import load_adapter
from components.methods.registry import count_parameters_meta
from components.models.load import load_model
from components.registry import Registry, manifest_base
from components.spec import AdapterSpec, BaseModelSpec, BehaviorSpec, TaskSpec
from components.training.recipe import train

ADAPTERS = TypeAdapter(AdapterSpec)
pytestmark = pytest.mark.usefixtures("one_thread")
HYBRIDS = {
    "lora+loha": [{"method": "lora", "r": 4}, {"method": "loha", "r": 4}],
    "prompt+lora": [{"method": "prompt_tuning", "num_virtual_tokens": 4, "init_text": "Answer yes or no"},
                    {"method": "lora", "r": 4}],
}


def behavior(data_file: Path, parts: list[dict]) -> BehaviorSpec:
    return BehaviorSpec.model_validate({
        "data": {"train": str(data_file), "eval": str(data_file)},
        "adapter": {"method": "hybrid", "parts": parts},
        "training": {"max_steps": 3, "batch_size": 4, "lr": 0.05, "warmup_ratio": 0, "seed": 0},
    })


@pytest.fixture(scope="module")
def trained(base_dir, data_file, tokenizer, tmp_path_factory):
    cache: dict[str, tuple[Path, object]] = {}

    def get(kind: str):
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"run-{kind.replace('+', '-')}")
            model = load_model(BaseModelSpec(id=str(base_dir)), device="cpu")
            cache[kind] = out / "adapter", train(model, tokenizer, behavior(data_file, HYBRIDS[kind]), out)
        return cache[kind]

    return get


def ids(tokenizer) -> torch.Tensor:
    return tokenizer(["Is 7 even?"], return_tensors="pt")["input_ids"]


def fresh(base_dir: Path):
    return load_model(BaseModelSpec(id=str(base_dir)), device="cpu").eval()


@pytest.mark.parametrize("kind", list(HYBRIDS))
def test_hybrid_trains_every_part_and_each_loads_in_vanilla_peft(trained, base_dir, tokenizer, kind):
    adapter_dir, record = trained(kind)
    manifest = json.loads((adapter_dir / "hybrid.json").read_text())
    assert manifest["kind"] == ("prompt" if kind.startswith("prompt") else "mixed")
    assert record.generation["passed"] and record.generation["changed_outputs"] >= 1
    total_part_params = 0
    for part in manifest["parts"]:
        folder = adapter_dir / part["name"]
        vanilla = PeftModel.from_pretrained(fresh(base_dir), folder)  # each part alone, plain peft
        assert vanilla.active_peft_config.peft_type == part["peft_type"]
        saved = load_file(folder / "adapter_model.safetensors")
        assert saved and all(".base_layer" not in k for k in saved)
        total_part_params += sum(v.numel() for v in saved.values())
        if part["method"] == "lora":
            assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())  # B moved off 0
    assert record.trainable_params == total_part_params  # every part was trainable, nothing else
    inspected = inspect_adapter(adapter_dir)  # each part's update, named by part
    assert {s.name.split(":")[0] for s in inspected.modules} == {p["name"] for p in manifest["parts"]}


@pytest.mark.parametrize("kind", list(HYBRIDS))
def test_reloaded_hybrid_equals_its_parts_applied_one_after_another(trained, base_dir, tokenizer, kind):
    adapter_dir, _ = trained(kind)
    parts = json.loads((adapter_dir / "hybrid.json").read_text())["parts"]
    hybrid = load_adapter(fresh(base_dir), adapter_dir).eval()
    # oracle: the low-rank parts merged into the base one by one with vanilla peft, then the soft prompt on top
    model = fresh(base_dir)
    for part in (p for p in parts if p["peft_type"] != "PROMPT_TUNING"):
        model = PeftModel.from_pretrained(model, adapter_dir / part["name"]).merge_and_unload()
    for part in (p for p in parts if p["peft_type"] == "PROMPT_TUNING"):
        model = PeftModel.from_pretrained(model, adapter_dir / part["name"])
    with torch.no_grad():
        got, want, base = hybrid(input_ids=ids(tokenizer)).logits, model(input_ids=ids(tokenizer)).logits, \
            fresh(base_dir)(input_ids=ids(tokenizer)).logits
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)
    assert (got[:, -1] - base[:, -1]).abs().max() > 1e-3  # the hybrid changes the model


def test_hybrid_registers_and_serves_from_the_registry(trained, base_dir, tokenizer, tmp_path):
    adapter_dir, _ = trained("prompt+lora")
    staging = tmp_path / "staging"
    (staging / "adapter").mkdir(parents=True)
    for f in adapter_dir.rglob("*"):
        if f.is_file():
            (staging / "adapter" / f.relative_to(adapter_dir)).parent.mkdir(parents=True, exist_ok=True)
            (staging / "adapter" / f.relative_to(adapter_dir)).write_bytes(f.read_bytes())
    spec = TaskSpec.model_validate({
        "name": "hyb", "goal": "behavior", "base_model": {"id": str(base_dir)}, "evaluation": {"max_new_tokens": 4},
        "behavior": {"data": {"train": "train.jsonl"}, "adapter": {"method": "hybrid", "parts": HYBRIDS["prompt+lora"]}},
    }, context={"check_exists": False})
    base = {"id": str(base_dir), "revision": None, "weights_hash": None, "path": str(base_dir)}
    reg = Registry(tmp_path / "registry")
    reg.publish("hyb", staging, manifest_base(spec, base_model=base))
    system = load_system("hyb@v1", registry=reg)
    messages = [[{"role": "user", "content": "Is 4 even?"}]]
    tuned, plain = system.generate(messages), system.generate(messages, use_adapter=False)
    direct = System("direct", spec, adapter_dir, None).generate(messages)
    assert tuned == direct and isinstance(plain[0], str)


def test_served_soft_prompt_hybrid_decodes_on_its_cache_as_whole_passes_do(tokenizer, tmp_path):
    """The engine's prompt-learning path (peft prefill, then the LoRA-carrying model under the soft prompt with
    the cache) gives each step the log-probability of a whole cache-free pass through the hybrid."""
    from components.serving.sampling import SamplingParams
    from tests.adaptflow.test_system import base_folder, cacheless_greedy, dedicated, make_adapter, task_spec

    # a base of its own, random adapter weights (a trained one says <|im_end|> at once)
    folder = base_folder(tokenizer, tmp_path / "base")
    spec = task_spec(folder, {"method": "hybrid", "parts": HYBRIDS["prompt+lora"]}, "hyb")
    adapter_dir = make_adapter(tokenizer, spec, 5, tmp_path / "adapter")
    system = System("hyb-served", spec, adapter_dir, None)
    prepared = system.prepare_chat([{"role": "user", "content": "Is 4 even?"}])
    done = system.complete(prepared, SamplingParams(8, logprobs=True))
    tokens, logprobs = cacheless_greedy(dedicated(spec, adapter_dir), prepared.ids, 8)
    assert len(done.token_ids) >= 3 and done.token_ids == tokens[:len(done.token_ids)]
    assert [c.logprob for c in done.logprobs] == pytest.approx(logprobs[:len(done.token_ids)], abs=1e-4)


def test_strict_spec_names_the_mix_and_what_can_train():
    with pytest.raises(ValidationError, match=r"adapter.parts ia3 \+ lora: peft cannot train this mix.*lora, dora, loha, lokr"):
        ADAPTERS.validate_python({"method": "hybrid", "parts": [{"method": "ia3"}, {"method": "lora"}]})
    with pytest.raises(ValidationError, match="prompt_tuning \\+ one lora or dora"):
        ADAPTERS.validate_python({"method": "hybrid", "parts": [{"method": "prompt_tuning"}, {"method": "loha"}]})
    default = ADAPTERS.validate_python({"method": "hybrid"})
    assert [p.method for p in default.parts] == ["lora", "loha"]


def test_hybrid_takes_part_in_compare_and_plan(base_dir):
    spec = TaskSpec.model_validate({
        "name": "cmp", "goal": "behavior", "base_model": {"id": str(base_dir)},
        "behavior": {"data": {"train": "train.jsonl"}},
        "compare": {"methods": ["lora"], "variants": [{"method": "hybrid", "parts": HYBRIDS["lora+loha"]}]},
    }, context={"check_exists": False})
    variants = expand_variants(spec)
    hybrid = next(v for v in variants if v.spec.behavior.adapter.method == "hybrid")
    assert hybrid.spec.behavior.training.lr == 2.0e-4  # low-rank family, like its parts
    trainable, total = count_parameters_meta(base_dir, hybrid.spec.behavior.adapter)
    lora_only, _ = count_parameters_meta(base_dir, ADAPTERS.validate_python({"method": "lora", "r": 4}))
    assert trainable > lora_only > 0 and total > trainable
