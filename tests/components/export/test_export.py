"""`adaptflow export`: a tiny LoRA trained on the triage data and registered, exported to each target and checked
against oracles: the merged folder reloads with plain transformers and answers as Adaptflow's own generation
does; llama.cpp's converter writes a GGUF that transformers loads and that answers the same prompts; the Ollama
TEMPLATE, rendered by a small Go-template renderer, is the tokenizer's chat template output; vLLM's adapter folder
loads with vanilla peft. Refusals are one line naming the thing and the fix, and leave nothing behind."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter
from typer.testing import CliRunner

from adaptflow.system import load_system
from adaptflow.system.generation import generate_texts
from components.export.engines import ChatML, TemplateError, chatml_shape, go_template
from components.export.gguf import ConverterError, llama_cpp_version, sdist_path
from components.export.run import TOLERANCES, ExportError, export_version
from components.methods.io import save_adapter
from components.methods.registry import apply_method
from components.models.load import load_model, resolve_model
from components.registry import Registry, manifest_base
from components.spec import AdapterSpec, BaseModelSpec, TaskSpec
from components.training.data import render_prompt
from components.training.recipe import train
from flows.cli import app
from tests.conftest import REPO, make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
TRIAGE = REPO / "specs/data/triage"
needs_converter = pytest.mark.skipif(not sdist_path().exists(), reason="run `make export-tools` (llama.cpp's converter)")


def _lines(path: Path, n: int) -> str:
    return "\n".join(path.read_text().splitlines()[:n]) + "\n"


def _publish(reg: Registry, spec: TaskSpec, adapter_dir: Path, staging: Path):
    shutil.copytree(adapter_dir, staging / "adapter")
    manifest = manifest_base(spec, base_model=resolve_model(spec.base_model))
    manifest["volatile"] = {"base_model_path": manifest["base_model"].pop("path")}  # as flows.pipeline.publish does
    return reg.publish(spec.name, staging, manifest)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """`triage@v1`: LoRA trained on 32 triage tickets until it answers with labels; 6 evaluation prompts.

    The base is a tiny random Llama with 7x the usual init scale: at 0.02 its logits cannot exceed ~1, so every
    greedy choice is a near-tie that any rounding flips; at 0.15 the trained adapter's choices win by 1-5 logits,
    as a real model's do."""
    root = tmp_path_factory.mktemp("export")
    base = root / "base"
    make_tiny_llama(tokenizer, tie_word_embeddings=False, initializer_range=0.15).save_pretrained(base)
    tokenizer.save_pretrained(base)
    (root / "train.jsonl").write_text(_lines(TRIAGE / "train.jsonl", 32))
    (root / "qa.jsonl").write_text(_lines(TRIAGE / "qa.jsonl", 6))
    spec = TaskSpec.model_validate({
        "name": "triage", "goal": "behavior", "base_model": {"id": str(base)},
        "behavior": {"data": {"train": str(root / "train.jsonl"), "eval_split": 0},
                     "adapter": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
                     "training": {"max_steps": 60, "batch_size": 8, "lr": 1e-2, "warmup_ratio": 0, "seed": 0}},
        "evaluation": {"data": str(root / "qa.jsonl"), "max_new_tokens": 4},
    })
    train(load_model(BaseModelSpec(id=str(base)), device="cpu"), tokenizer, spec.behavior, root / "run")
    reg = Registry(root / "registry")
    _publish(reg, spec, root / "run" / "adapter", root / "staging")
    return reg, spec, root


def export(world, *args: str):
    reg, _, _ = world
    return CliRunner().invoke(app, ["export", *args, "--root", str(reg.root)])


def adaptflow_answers(world) -> tuple[list[str], list[str]]:
    """(rendered prompts, answers) from Adaptflow's own generation of the registered system."""
    reg, spec, _ = world
    system = load_system("triage@v1", reg)
    from components.evaluation.arms import load_eval_items

    batch = [item.messages for item in load_eval_items(spec)]
    tok = system.handle.tokenizer
    return [render_prompt(tok, m) for m in batch], system.generate(batch, max_new_tokens=4)


def agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


# --- merged ---------------------------------------------------------------------------------------------


def test_merged_folder_reloads_and_answers_as_adaptflow_does(world, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export(world, "triage@v1", "--to", "merged", "--out", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    assert "exported triage@v1 --to merged" in result.output and "6/6 greedy answers equal" in result.output
    out = tmp_path / "m"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"] == "triage@v1" and manifest["target"] == "merged"
    assert manifest["content_digest"] == world[0].open("triage@v1").manifest["content_digest"]
    assert {"torch", "transformers", "peft", "gguf"} <= set(manifest["tools"])
    check = manifest["verification"]["merged"]
    assert check["agreement"] == 1.0 and check["relative_logit_drift"] <= TOLERANCES["fp32"][0]
    assert not any(p.name.startswith("m.tmp-") for p in tmp_path.iterdir())

    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no peft layers left
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    assert reloaded_tok.chat_template == tokenizer.chat_template
    prompts, ours = adaptflow_answers(world)
    theirs = generate_texts(model, reloaded_tok, prompts, max_new_tokens=4)
    assert set(ours) <= {"billing", "bug", "account", "shipping", "feature_request", "cancellation"}  # it learned labels
    print(f"merged fp32 vs Adaptflow's generation: {agreement(ours, theirs):.0%} of {len(ours)} answers", ours)
    assert agreement(ours, theirs) >= 0.95


def test_bf16_merge_states_its_drift(world, tmp_path):
    reg, _, _ = world
    result = export_version(reg, "triage@v1", "merged", tmp_path / "b", dtype="bf16")
    check = result.manifest["verification"]["merged"]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dtype"] == "bfloat16"
    assert check["tolerance"] == f"{TOLERANCES['bf16'][0]:g} x max|logit|" and check["agreement"] >= 0.9
    print("bf16 merge:", {k: check[k] for k in ("relative_logit_drift", "agreement")})


# --- gguf and ollama ------------------------------------------------------------------------------------


@needs_converter
def test_gguf_q8_0_is_written_by_llama_cpp_and_answers_the_same_prompts(world, tmp_path):
    result = export(world, "triage@v1", "--to", "gguf", "--gguf-type", "q8_0", "--out", str(tmp_path / "g"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "g" / "export.json").read_text())
    gguf_file = tmp_path / "g" / "triage-v1-q8_0.gguf"
    assert manifest["facts"]["gguf"]["pre_tokenizer"] == "smollm" and "Q8_0" in manifest["facts"]["gguf"]["tensor_types"]
    assert "llama-cpp-python==0.3.36" in manifest["tools"]["llama.cpp converter"]
    assert f"run: llama-cli -m {gguf_file}" in result.output
    hyper = manifest["facts"]["gguf"]["hyperparameters"]
    assert hyper["block_count"] == 2 and hyper["attention.head_count_kv"] == 2
    # the GGUF's answers, from the export's own load of it (transformers, gguf_file=), against Adaptflow's generation
    _, ours = adaptflow_answers(world)
    theirs = manifest["verification"]["gguf"]["answers"]["export"]
    print(f"gguf q8_0 vs Adaptflow's generation: {agreement(ours, theirs):.0%}", manifest["verification"]["gguf"])
    assert all(theirs) and agreement(ours, theirs) >= TOLERANCES["q8_0"][1]


@needs_converter
def test_ollama_export_has_the_gguf_and_a_modelfile(world, tmp_path, tokenizer):
    result = export(world, "triage@v1", "--to", "ollama", "--gguf-type", "f16", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "o"
    assert f"run: ollama create triage -f {out / 'Modelfile'}" in result.output
    text = (out / "Modelfile").read_text()
    assert "FROM ./triage-v1-f16.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    system = json.loads((TRIAGE / "train.jsonl").read_text().splitlines()[0])["messages"][0]["content"]
    assert f'SYSTEM """{system}"""' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "My parcel is late."}]
    assert render_go(template, messages) == render_prompt(tokenizer, messages)


# --- Ollama's TEMPLATE against the chat template, rendered by a Go-template subset ------------------------


def render_go(template: str, messages: list[dict]) -> str:
    """Go's text/template for what go_template writes: `{{- ... -}}` trimming, range $i, $m := .Messages,
    if (and/eq/ne), $m.Field; enough to check the translation, not a general renderer."""
    tokens = re.split(r"({{-?.*?-?}})", template)
    parts: list[tuple[str, str]] = []  # ("text", s) | ("action", s)
    for tok in tokens:
        if tok.startswith("{{"):
            if tok.startswith("{{-") and parts and parts[-1][0] == "text":
                parts[-1] = ("text", parts[-1][1].rstrip())
            parts.append(("action", tok.strip("{}-").strip()))
            parts.append(("trim", "") if tok.endswith("-}}") else ("text", ""))
        else:
            if parts and parts[-1][0] == "trim":
                parts[-1] = ("text", tok.lstrip())
            else:
                parts.append(("text", tok))
    parts = [p for p in parts if p[0] != "trim"]

    def value(expr: str, scope: dict) -> object:
        expr = expr.strip()
        if expr.startswith('"'):
            return expr.strip('"')
        if expr.isdigit():
            return int(expr)
        if expr.startswith("("):
            return call(expr[1:-1], scope)
        name, _, attr = expr.partition(".")
        target = scope[name] if name else scope["."]
        return target[attr.lower()] if attr and isinstance(target, dict) else target

    def call(expr: str, scope: dict) -> object:
        args = re.findall(r'\([^()]*\)|"[^"]*"|\S+', expr)
        fn, rest = args[0], [value(a, scope) for a in args[1:]]
        if fn == "eq":
            return rest[0] == rest[1]
        if fn == "ne":
            return rest[0] != rest[1]
        if fn == "and":
            return all(rest)
        return value(expr, scope)

    def run(i: int, scope: dict, out: list[str]) -> int:
        while i < len(parts):
            kind, body = parts[i]
            if kind == "text":
                out.append(body)
            elif body == "end":
                return i
            elif body.startswith("range"):
                i_var, m_var, seq = re.match(r"range \$(\w+), \$(\w+) := (\S+)", body).groups()
                end = i
                for n, item in enumerate(value(seq, scope)):
                    end = run(i + 1, scope | {f"${i_var}": n, f"${m_var}": item}, out)
                i = end if value(seq, scope) else skip(i + 1)
            elif body.startswith("if "):
                branch: list[str] = []
                end = run(i + 1, scope, branch)
                if call(body[3:], scope):
                    out.extend(branch)
                i = end
            else:
                out.append(str(value(body, scope)))
            i += 1
        return i

    def skip(i: int) -> int:
        depth = 0
        while True:
            kind, body = parts[i]
            if kind == "action" and (body.startswith(("range", "if "))):
                depth += 1
            elif kind == "action" and body == "end":
                if depth == 0:
                    return i
                depth -= 1
            i += 1

    out: list[str] = []
    scope = {".": {"messages": messages}}
    run(0, scope, out)
    return "".join(out)


def test_go_template_matches_the_chat_template_with_and_without_a_system_message(tokenizer):
    shape = chatml_shape(tokenizer)
    assert shape.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    template = go_template(shape)
    for messages in ([{"role": "system", "content": "Reply with one label."}, {"role": "user", "content": "Refund?"}],
                     [{"role": "user", "content": "Refund?"}],
                     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Refund?"}]):
        assert render_go(template, messages) == render_prompt(tokenizer, messages)
    assert render_go(go_template(ChatML(None)), [{"role": "user", "content": "x"}]) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")


def test_a_non_chatml_template_is_refused_with_the_reason(tokenizer):
    other = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    other.chat_template = "{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}"
    with pytest.raises(TemplateError, match="not ChatML.*Write TEMPLATE yourself"):
        chatml_shape(other)


# --- vllm -----------------------------------------------------------------------------------------------


def test_vllm_export_copies_the_adapter_and_writes_the_launch(world, tmp_path):
    result = export(world, "triage@v1", "--to", "vllm", "--out", str(tmp_path / "v"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "v"
    reg, spec, _ = world
    source = reg.open("triage@v1")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / "adapter" / name).read_bytes() == (source.path / "adapter" / name).read_bytes()
    serve = (out / "serve.sh").read_text()
    assert "--enable-lora --lora-modules triage=./adapter --max-lora-rank 8" in serve
    assert "--chat-template ./chat_template.jinja --dtype float32" in serve
    assert f'BASE="${{BASE:-{resolve_model(spec.base_model).path}}}"' in serve
    assert (out / "chat_template.jinja").read_text() == json.loads(json.dumps(
        load_system("triage@v1", reg).handle.tokenizer.chat_template))
    compose = (out / "docker-compose.yml").read_text()
    assert "vllm/vllm-openai" in compose and '"--enable-lora"' in compose
    import subprocess

    assert subprocess.run(["bash", "-n", str(out / "serve.sh")], check=False).returncode == 0
    assert json.loads((out / "export.json").read_text())["verification"]["vllm"]["agreement"] == 1.0


def _random_system(world, tokenizer, name: str, adapter: dict) -> None:
    """Register `name@v1`: `adapter` on the tiny base with random (not trained) weights, as test_compose does."""
    reg, spec, root = world
    task = TaskSpec.model_validate(spec.model_dump(mode="json") | {
        "name": name, "behavior": spec.behavior.model_dump(mode="json") | {"adapter": adapter}})
    model = apply_method(load_model(task.base_model, device="cpu"), task.behavior.adapter)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn_like(param) * 0.3)
    save_adapter(model, TypeAdapter(AdapterSpec).validate_python(adapter), root / f"{name}-adapter")
    _publish(reg, task, root / f"{name}-adapter", root / f"staging-{name}")


def test_ia3_is_merged_for_vllm_and_a_soft_prompt_is_refused_everywhere(world, tmp_path, tokenizer):
    _random_system(world, tokenizer, "triage-ia3", {"method": "ia3"})
    result = export(world, "triage-ia3@v1", "--to", "vllm", "--out", str(tmp_path / "v"))
    assert result.exit_code == 0, result.output
    serve = (tmp_path / "v" / "serve.sh").read_text()
    assert "--enable-lora" not in serve and 'BASE="${BASE:-./model}"' in serve
    assert "vLLM serves LoRA modules only, and it is a ia3 adapter, not LoRA" in result.output
    assert (tmp_path / "v" / "model" / "model.safetensors").exists()

    _random_system(world, tokenizer, "triage-pt", {"method": "prompt_tuning", "num_virtual_tokens": 4})
    for target in ("merged", "gguf", "ollama", "vllm"):
        refused = export(world, "triage-pt@v1", "--to", target, "--out", str(tmp_path / target))
        assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
        assert f"triage-pt@v1 cannot be exported --to {target}: a prompt_tuning adapter prepends trained virtual " \
               "tokens" in refused.output and "adaptflow serve" in refused.output
        assert not (tmp_path / target).exists()


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_input_is_one_line_naming_the_thing_and_the_fix(world, tmp_path):
    unknown = export(world, "nope@v1", "--to", "merged", "--out", str(tmp_path / "x"))
    assert unknown.exit_code == 1 and "no task named 'nope'" in unknown.output
    missing = export(world, "triage@v9", "--to", "merged", "--out", str(tmp_path / "x"))
    assert "triage has no version v9 (versions: v1)" in missing.output
    target = export(world, "triage@v1", "--to", "onnx", "--out", str(tmp_path / "x"))
    assert "--to 'onnx' is not a target; use one of merged, gguf, ollama, vllm" in target.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    refused = export(world, "triage@v1", "--to", "vllm", "--out", str(busy))
    assert refused.exit_code == 1 and "exists and is not empty; choose another folder or pass --force" in refused.output
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    if llama_cpp_version() is None:
        q4 = export(world, "triage@v1", "--to", "gguf", "--gguf-type", "q4_k_m", "--out", str(tmp_path / "x"))
        assert "needs llama.cpp's compiled quantizer, which comes with llama-cpp-python" in q4.output
    for r in (unknown, missing, target, refused):
        assert r.output.count("\n") == 1, r.output
    forced = export(world, "triage@v1", "--to", "vllm", "--out", str(busy), "--force")
    assert forced.exit_code == 0 and not (busy / "keep.txt").exists() and (busy / "serve.sh").exists()
    assert not list(tmp_path.glob("*.tmp-*")) and not (tmp_path / "x").exists()


def test_a_failure_midway_leaves_nothing_behind(world, tmp_path, monkeypatch):
    reg, _, _ = world
    empty = tmp_path / "not-llama-cpp"
    empty.mkdir()
    monkeypatch.setenv("ADAPTFLOW_LLAMA_CPP", str(empty))  # the merge runs, then the converter is missing
    with pytest.raises(ConverterError, match="holds no convert_hf_to_gguf.py"):
        export_version(reg, "triage@v1", "gguf", tmp_path / "g")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-llama-cpp"]


def test_lora_flag_needs_the_gguf_target(world, tmp_path):
    reg, _, _ = world
    with pytest.raises(ExportError, match="--lora writes a GGUF LoRA adapter; use it with --to gguf"):
        export_version(reg, "triage@v1", "vllm", tmp_path / "x", lora=True)


@needs_converter
@pytest.mark.slow
def test_gguf_lora_adapter_keeps_every_module(world, tmp_path):
    reg, _, _ = world
    result = export_version(reg, "triage@v1", "gguf", tmp_path / "l", lora=True, gguf_type="f16")
    check = result.manifest["verification"]["gguf_lora"]
    assert check["modules"] == 14 and check["max_relative_norm_diff"] < 1e-2  # 2 layers x 7 linear layers
    assert {p.name for p in (tmp_path / "l").iterdir()} == {"triage-v1-lora-f16.gguf", "base-f16.gguf", "export.json"}


def needs_llama_cpp(test):
    """Slow, and run only where llama-cpp-python is installed (make test-engines)."""
    skip = pytest.mark.skipif(llama_cpp_version() is None, reason="llama-cpp-python is not installed (make test-engines)")
    return pytest.mark.slow(skip(test))


@needs_llama_cpp
def test_llama_cpp_runs_the_gguf(world, tmp_path):
    reg, _, _ = world
    result = export_version(reg, "triage@v1", "gguf", tmp_path / "g", gguf_type="q8_0")
    check = result.manifest["verification"]["llama_cpp"]
    print("llama.cpp vs the adapted model:", check)
    assert check["prompts"] == 6 and check["agreement"] >= TOLERANCES["q8_0"][1]


@needs_llama_cpp
def test_q4_k_m_comes_from_llama_cpp_quantizer(world, tmp_path):
    reg, _, _ = world
    result = export_version(reg, "triage@v1", "gguf", tmp_path / "q", gguf_type="q4_k_m")
    facts = result.manifest["facts"]["gguf"]
    assert facts["quantize_seconds"] >= 0 and {p.name for p in (tmp_path / "q").iterdir()} == {
        "triage-v1-q4_k_m.gguf", "export.json"}
    print("q4_k_m:", facts["tensor_types"], result.manifest["verification"]["gguf"]["agreement"],
          result.manifest["verification"]["llama_cpp"]["agreement"])


def test_the_converter_comes_from_the_pinned_sdist_only(tmp_path, monkeypatch):
    from components.export import gguf as export_gguf

    makefile = (REPO / "Makefile").read_text()
    assert f"LLAMA_CPP_PYTHON := {export_gguf.LLAMA_CPP_PYTHON}" in makefile  # make export-tools fetches this one
    fake = tmp_path / export_gguf.SDIST
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ConverterError, match="not the pinned 832db0699007"):
        export_gguf.unpack_converter(fake, tmp_path / "tools")
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTFLOW_LLAMA_CPP_SDIST", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(ConverterError, match="run `make export-tools`"):
        export_gguf.converter_dir()
    assert not (tmp_path / "tools").exists()
