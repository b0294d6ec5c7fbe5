"""Bring your own model: every architecture x method on a tiny random-weight model built from its config alone.

Each case leaves `target_modules` unset, so the architecture's default is what trains: peft's own table by
`config.model_type`, or, for phi3 (not in peft 0.21's table), the attention's fused qkv layer found by name.
The adapter trains 2 steps through `components.training.recipe.train`, is saved, and reloads with vanilla
`PeftModel.from_pretrained` to the logits of the model that trained (within 1e-5). It is then registered and
serves one request the way `adaptflow serve` does (`load_system` from the registry, the base's engine): each
token the engine picks is the vanilla model's greedy choice, at the vanilla model's log-probability (1e-4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from adaptflow.system import load_system
from components.methods import registry as methods
from components.models.load import load_model, resolve_model
from components.models.target_modules import TargetModulesError
from components.registry import Registry, manifest_base
from components.serving.sampling import SamplingParams
from components.spec import BaseModelSpec, BehaviorSpec, QuantizationSpec, TaskSpec, parse_adapter
from components.training.recipe import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# model_type -> config overrides beyond the shared tiny sizes below (each config's own names where they differ)
ARCHITECTURES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma2": {"head_dim": 16},
    # the built-in gemma3-270m's architecture, one sliding-window layer and one global one as its 5:1 pattern has
    "gemma3_text": {"head_dim": 16, "sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"]},
    "phi3": {},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "gpt_neox": {},
    "falcon": {},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256}

# The defaults each case must train (peft 0.21's tables; phi3 found by name): the oracle for the resolver.
LORA_DEFAULTS = {"llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                 "qwen3": ["q_proj", "v_proj"], "gemma2": ["q_proj", "v_proj"], "gemma3_text": ["q_proj", "v_proj"],
                 "phi3": ["qkv_proj"],
                 "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "falcon": ["query_key_value"],
                 "opt": ["q_proj", "v_proj"]}
IA3_DEFAULTS = {  # (target_modules, feedforward_modules)
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen3": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma3_text": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "phi3": (["qkv_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "gpt_neox": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "falcon": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "opt": (["q_proj", "k_proj", "fc2"], ["fc2"]),
}
METHODS = ["lora", "ia3", "prompt_tuning", "qlora"]
# transformers 5.25 swaps in bitsandbytes layers only where `type(module) is nn.Linear` (or GPT-2's Conv1D):
# Falcon's layers are `FalconLinear`, an nn.Linear subclass, so a "4-bit" Falcon loads with no 4-bit layer at all.
NOT_4BIT = {"falcon": "transformers 5.25's bitsandbytes replacement skips FalconLinear (an nn.Linear subclass; "
                      "integrations/bitsandbytes.py checks `type(module) is nn.Linear`): the base loads unquantized"}


def _config(model_type: str, tokenizer):
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return AutoConfig.for_model(model_type, **TINY, **ids, **ARCHITECTURES[model_type])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random model folder per architecture (config, safetensors, the built-in tokenizer), built once."""
    folders: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in folders:
            folder = tmp_path_factory.mktemp(model_type)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(_config(model_type, tokenizer)).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            folders[model_type] = folder
        return folders[model_type]

    return get


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {n} even?"},
                          {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]} for n in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _behavior_dict(data_file: Path, method: str) -> dict:
    adapter = {"method": method, "num_virtual_tokens": 4} if method == "prompt_tuning" else {"method": method}
    return {
        "data": {"train": str(data_file), "eval": str(data_file)},
        "adapter": adapter,  # no target_modules: the architecture's default
        "training": {"max_steps": 2, "batch_size": 4, "lr": 0.05, "warmup_ratio": 0, "seed": 0},
    }


def _behavior(data_file: Path, method: str) -> BehaviorSpec:
    return BehaviorSpec.model_validate(_behavior_dict(data_file, method))


def _base(folder: Path, method: str) -> BaseModelSpec:
    return BaseModelSpec(id=str(folder), quantization=QuantizationSpec(bits=4) if method == "qlora" else None)


SERVED_TOKENS = 3


def _register(folder: Path, data_file: Path, method: str, adapter_dir: Path, tmp_path: Path) -> Registry:
    """Publish the trained adapter as `byo@v1` the way `adaptflow run` registers one (adapter/ + manifest)."""
    base = {"id": str(folder), "quantization": {"bits": 4} if method == "qlora" else None}
    spec = TaskSpec.model_validate({"name": "byo", "goal": "behavior", "base_model": base,
                                    "behavior": _behavior_dict(data_file, method),
                                    "evaluation": {"max_new_tokens": SERVED_TOKENS}})
    staging = tmp_path / "staging"
    shutil.copytree(adapter_dir, staging / "adapter")
    manifest = manifest_base(spec, base_model=resolve_model(spec.base_model))
    manifest["volatile"] = {"base_model_path": manifest["base_model"].pop("path")}  # as flows.pipeline.publish does
    registry = Registry(tmp_path / "registry")
    registry.publish(spec.name, staging, manifest)
    return registry


def _check_served_request(registry: Registry, vanilla) -> None:
    """One greedy request through the server's path; every token checked against the vanilla peft model."""
    system = load_system("byo@latest", registry)
    assert system.method is not None
    prepared = system.prepare_chat([{"role": "user", "content": "Is 12 even?"}], use_retrieval=False)
    done = system.complete(prepared, SamplingParams(SERVED_TOKENS, logprobs=True))
    chosen = list(done.logprobs or []) + ([done.stop_choice] if done.stop_choice else [])
    assert chosen and len(chosen) == done.completion_tokens + (done.stop_choice is not None)
    ids = torch.tensor([prepared.ids + [c.token for c in chosen]])
    with torch.no_grad():  # a soft prompt prepends its virtual tokens' positions: keep the text's
        logits = vanilla(input_ids=ids).logits[0, -ids.shape[1]:].float()
    logprobs = torch.log_softmax(logits[len(prepared.ids) - 1:-1], dim=-1)
    for step, choice in enumerate(chosen):
        assert logprobs[step, choice.token].item() >= logprobs[step].max().item() - 1e-4  # greedy, up to a tie
        assert abs(logprobs[step, choice.token].item() - choice.logprob) < 1e-4


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_default_modules_train_save_and_reload_with_vanilla_peft(model_dir, data_file, tokenizer, tmp_path,
                                                                monkeypatch, model_type, method):
    if method == "qlora" and model_type in NOT_4BIT:
        pytest.skip(NOT_4BIT[model_type])
    folder = model_dir(model_type)
    trained, apply_method = [], methods.apply_method  # the PeftModel `train` builds: what the saved adapter must give

    def apply_and_keep(*args, **kwargs):
        trained.append(apply_method(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(methods, "apply_method", apply_and_keep)
    record = train(load_model(_base(folder, method), device="cpu"), tokenizer, _behavior(data_file, method), tmp_path)
    assert record.steps == 2 and record.generation["passed"]

    if method == "qlora":  # LoRA on 4-bit layers, not on a base that only says it is quantized
        wrapped = [m.base_layer for m in trained[0].modules() if hasattr(m, "lora_A")]
        assert wrapped and all(isinstance(layer, Linear4bit) for layer in wrapped)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if method in ("lora", "qlora"):
        assert sorted(config["target_modules"]) == sorted(LORA_DEFAULTS[model_type])
    elif method == "ia3":
        targets, feedforward = IA3_DEFAULTS[model_type]
        assert (sorted(config["target_modules"]), sorted(config["feedforward_modules"])) == (sorted(targets),
                                                                                            sorted(feedforward))

    ids = tokenizer(["Is 12 even?", "Tell me a story"], padding=True, return_tensors="pt")["input_ids"]
    vanilla = PeftModel.from_pretrained(load_model(_base(folder, method), device="cpu"), tmp_path / "adapter").eval()
    base = load_model(_base(folder, method), device="cpu").eval()
    with torch.no_grad():
        ours, theirs = trained[0].eval()(input_ids=ids).logits, vanilla(input_ids=ids).logits
        untuned = base(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 1e-5
    # the adapter is on and trained, so the match is not trivial (a soft prompt adds positions in front)
    assert (ours[:, -ids.shape[1]:] - untuned).abs().max().item() > 1e-4
    _check_served_request(_register(folder, data_file, method, tmp_path / "adapter", tmp_path), vanilla)


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_a_module_name_the_model_lacks_names_the_key_the_closest_layers_and_the_fix(model_dir, model_type):
    model = AutoModelForCausalLM.from_pretrained(model_dir(model_type))
    with pytest.raises(TargetModulesError) as err:
        methods.apply_method(model, parse_adapter({"method": "lora", "target_modules": ["q_proj", "v_proj"]}))
    expected = {
        "gpt2": "behavior.adapter.target_modules: 'q_proj', 'v_proj' match no layer of the base model (model_type "
                "'gpt2'). Closest to 'q_proj': mlp.c_proj; 'v_proj': mlp.c_proj. Its layers: attn.c_proj, c_attn, c_fc, lm_head, mlp.c_proj, wpe, wte. Use names from that "
                "list, or remove target_modules for this architecture's default [c_attn]",
        "phi3": "behavior.adapter.target_modules: 'q_proj', 'v_proj' match no layer of the base model (model_type "
                "'phi3'). Closest to 'q_proj': qkv_proj, o_proj; 'v_proj': qkv_proj, o_proj. Its layers: down_proj, embed_tokens, gate_up_proj, "
                "lm_head, o_proj, qkv_proj. Use names from that list, or remove target_modules for this "
                "architecture's default [qkv_proj]",
    }
    assert str(err.value) == expected[model_type]


def _plan_spec(ws: Path, folder: Path, adapter: str) -> Path:
    (ws / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Is 2 even?"},
                                                             {"role": "assistant", "content": "yes"}]}) + "\n")
    (ws / "spec.yaml").write_text(
        f"name: byo\nbase_model: {{id: {folder}, allow_outside_workspace: true}}\n"
        f"behavior:\n  data: {{train: train.jsonl, eval_split: 0}}\n  adapter: {adapter}\n")
    return ws / "spec.yaml"


def test_plan_prints_the_modules_the_architecture_defaults_to(model_dir, tmp_path):
    from components.routing.plan import make_plan
    from components.spec.load import load_spec
    from flows.cmd_spec import render_plan

    spec = _plan_spec(tmp_path, model_dir("gpt2"), "{method: ia3}")
    text = render_plan(make_plan(load_spec(spec, tmp_path), str(spec), device="cpu"))
    assert "## target modules\n  behavior.adapter: target_modules [c_attn, mlp.c_proj] on 4 layers (peft's default " \
           "for model_type 'gpt2'); feedforward_modules [mlp.c_proj]" in text
    assert "  behavior.adapter.target_modules: [c_attn, mlp.c_proj] (peft's default for model_type 'gpt2')" in text
    assert "  behavior.adapter.feedforward_modules: [mlp.c_proj] (the architecture's default among " \
           "target_modules)" in text

    spec = _plan_spec(tmp_path, model_dir("phi3"), "{method: lora, r: 4}")
    text = render_plan(make_plan(load_spec(spec, tmp_path), str(spec), device="cpu"))
    assert "  behavior.adapter: target_modules [qkv_proj] on 2 layers (found by name: model_type 'phi3' is not in " \
           "peft 0.21.2's table; the attention's query/value layers)" in text


def test_plan_refuses_a_module_name_the_model_lacks_as_a_spec_error(model_dir, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    spec = _plan_spec(tmp_path, model_dir("gpt2"), "\n    method: lora\n    target_modules: [q_proj, c_atn]")
    result = CliRunner().invoke(app, ["plan", str(spec), "--workspace", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert f"error: {spec} line 7: behavior.adapter.target_modules: 'q_proj', 'c_atn' match no layer of the base " \
           "model (model_type 'gpt2'). Closest to 'q_proj': mlp.c_proj; 'c_atn': c_attn. Its layers: " in result.output
    assert "unexpected" not in result.output and "bug" not in result.output


def test_set_names_are_kept_and_ia3_feedforward_defaults_to_the_architectures_among_them(tokenizer):
    from components.models.target_modules import resolve_modules

    with torch.device("meta"):
        phi3 = AutoModelForCausalLM.from_config(_config("phi3", tokenizer))
    kept = resolve_modules(parse_adapter({"method": "lora", "target_modules": ["o_proj"]}), phi3)
    assert kept.target_modules == ["o_proj"]
    ia3 = resolve_modules(parse_adapter({"method": "ia3", "target_modules": ["qkv_proj", "down_proj"]}), phi3)
    assert (ia3.target_modules, ia3.feedforward_modules) == (["qkv_proj", "down_proj"], ["down_proj"])
    assert resolve_modules(parse_adapter({"method": "ia3", "target_modules": ["qkv_proj"]}), phi3).feedforward_modules == []
    with pytest.raises(TargetModulesError, match=r"^behavior.adapter.feedforward_modules: \[down_proj\] is not in "
                                                 r"target_modules \[qkv_proj\]: .*add them to target_modules"):
        resolve_modules(parse_adapter({"method": "ia3", "target_modules": ["qkv_proj"],
                                       "feedforward_modules": ["down_proj"]}), phi3)
    hybrid = parse_adapter({"method": "hybrid", "parts": [{"method": "lora"}, {"method": "loha", "target_modules": ["q"]}]})
    with pytest.raises(TargetModulesError, match=r"^behavior.adapter.parts.1.target_modules: 'q' matches no layer"):
        resolve_modules(hybrid, phi3)
    parts = resolve_modules(parse_adapter({"method": "hybrid", "parts": [{"method": "lora"}, {"method": "loha"}]}),
                            phi3).parts
    assert [p.target_modules for p in parts] == [["qkv_proj"], ["qkv_proj"]]


def _knowledge_spec(ws: Path, folder: Path) -> Path:
    (ws / "docs").mkdir(exist_ok=True)
    (ws / "docs" / "a.md").write_text("# Veloria\n\nVeloria's capital is Port Amrel.\n")
    (ws / "qa.jsonl").write_text(json.dumps({"question": "What is Veloria's capital?", "answer": "Port Amrel"}) + "\n")
    (ws / "spec.yaml").write_text(
        f"name: byo-docs\ngoal: knowledge\nbase_model: {{id: {folder}, allow_outside_workspace: true}}\n"
        "knowledge: {documents: docs/, inject: finetune}\nevaluation: {data: qa.jsonl}\n")
    return ws / "spec.yaml"


# knowledge.finetune's default adapter wraps every linear layer but the output head, named per architecture
EVERY_LINEAR = {"gpt2": ("[c_attn, c_proj, c_fc]", 8), "phi3": ("[o_proj, qkv_proj, gate_up_proj, down_proj]", 8),
                "llama": ("[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]", 14)}


@pytest.mark.parametrize("model_type", list(EVERY_LINEAR))
def test_knowledge_finetune_default_wraps_every_linear_layer_of_the_architecture_as_plan_says(model_dir, tmp_path,
                                                                                            model_type):
    from components.routing.plan import make_plan
    from components.spec import KnowledgeFinetuneSpec
    from components.spec.load import load_spec
    from flows.cmd_spec import render_plan

    spec = _knowledge_spec(tmp_path, model_dir(model_type))
    plan = make_plan(load_spec(spec, tmp_path), str(spec), device="cpu")
    names, layers = EVERY_LINEAR[model_type]
    text = render_plan(plan)
    assert (f"## target modules\n  knowledge.finetune.adapter: target_modules all-linear = {names} on {layers} layers "
            "(knowledge.finetune's default: every linear layer but the output head)") in text
    assert (f"  knowledge.finetune.adapter.target_modules: all-linear = {names} (knowledge.finetune's default: "
            "every linear layer but the output head)") in text
    # the oracle: the layers peft itself wraps for the default adapter, counted as plan counts them
    model = AutoModelForCausalLM.from_pretrained(model_dir(model_type))
    peft_model = methods.apply_method(model, KnowledgeFinetuneSpec().adapter)
    wrapped = [n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == layers == plan["target_modules"][0]["layers"]
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert plan["parameters"]["trainable"] == trainable


def test_knowledge_finetune_modules_set_in_the_spec_are_checked_against_the_model(model_dir, tmp_path):
    from components.routing.plan import make_plan
    from components.spec.load import SpecError, load_spec

    spec = _knowledge_spec(tmp_path, model_dir("gpt2"))
    spec.write_text(spec.read_text().replace(
        "inject: finetune}", "inject: finetune, finetune: {adapter: {method: lora, target_modules: [q_proj]}}}"))
    with pytest.raises(SpecError, match=r"knowledge\.finetune\.adapter\.target_modules: 'q_proj' matches no layer of "
                                        r"the base model \(model_type 'gpt2'\)\. .*or remove target_modules for this "
                                        r"architecture's default \[c_attn\]"):
        make_plan(load_spec(spec, tmp_path), str(spec), device="cpu")
