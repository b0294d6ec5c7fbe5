"""`adaptflow serve --engine vllm` without a vLLM server: option checks, which systems vLLM may serve and the
reason given for the others, the /v1/completions body a row becomes, and the launcher's errors.
Real peft adapter configs; no vLLM is started here (tests/flows/test_serve_vllm.py does that)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from components.serving.engine import Route, Row
from components.serving.sampling import SamplingParams
from components.serving.vllm_engine import VllmEngine, VllmModel, _token_choices
from components.spec import BaseModelSpec
from flows.cli import app
from flows.cmd_query import engine_problem
from flows.vllm_backend import Lane, _Refused, adapter_refusal, base_refusal
from flows.vllm_launch import VllmStart, VllmStartError, vllm_command, wait_healthy

runner = CliRunner()


@pytest.mark.parametrize(("args", "message"), [
    ({"engine": "tgi", "vllm_url": None, "launch": False}, "--engine is 'tgi'; use builtin or vllm"),
    ({"engine": "builtin", "vllm_url": "http://x:1", "launch": False}, "--vllm-url needs --engine vllm"),
    ({"engine": "builtin", "vllm_url": None, "launch": True}, "--launch needs --engine vllm"),
    ({"engine": "vllm", "vllm_url": None, "launch": False}, "--engine vllm needs a vLLM server: --vllm-url"),
    ({"engine": "vllm", "vllm_url": "http://x:1", "launch": True}, "give one"),
    ({"engine": "vllm", "vllm_url": "127.0.0.1:8001", "launch": False}, "give the server's base URL"),
    ({"engine": "vllm", "vllm_url": "http://x:1", "launch": False, "fallback": "maybe"}, "use refuse or builtin"),
])
def test_engine_options_that_do_not_fit_name_the_option_and_the_fix(args, message):
    assert message in engine_problem(**args)


def test_engine_options_that_fit():
    assert engine_problem("builtin", None, False) is None
    assert engine_problem("vllm", "http://127.0.0.1:8001", False) is None
    assert engine_problem("vllm", None, True, "builtin") is None


def test_serve_exits_2_before_loading_anything(tmp_path):
    result = runner.invoke(app, ["serve", "--engine", "vllm", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "--engine vllm needs a vLLM server" in result.output


def _adapter(folder: Path, config) -> Path:
    config.save_pretrained(str(folder))  # peft's own adapter_config.json, as a training run writes it
    return folder


def _system(method: str | None, bits: int | None = None, base: str = "/models/base"):
    quant = {"bits": bits} if bits else None
    spec = SimpleNamespace(reading_model=BaseModelSpec(quantization=quant))
    return SimpleNamespace(ref="triage@v3", method=method, spec=spec,
                           handle=SimpleNamespace(resolved=SimpleNamespace(path=base)))


def test_plain_lora_is_served_and_other_methods_are_refused_with_the_reason(tmp_path):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    lora = _adapter(tmp_path / "lora", LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    assert adapter_refusal(_system("lora"), lora, max_lora_rank=64) is None
    assert adapter_refusal(_system(None), None) is None

    cases = {
        "ia3": (IA3Config(target_modules=["k_proj"], feedforward_modules=[]), "ia3 system (IA3 adapter); vLLM loads "
                                                                            "LoRA adapters only"),
        "prompt_tuning": (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                          "prompt_tuning system (PROMPT_TUNING adapter)"),
        "prefix_tuning": (PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                          "prefix_tuning system (PREFIX_TUNING adapter)"),
        "dora": (LoraConfig(r=8, target_modules=["q_proj"], use_dora=True), "DoRA adapter"),
        "selective": (LoraConfig(r=8, target_modules=["q_proj"], modules_to_save=["lm_head"]), "trains whole modules"),
        "lora-r128": (LoraConfig(r=128, target_modules=["q_proj"]), "rank is 128, over the vLLM server's "
                                                                    "--max-lora-rank 64"),
    }
    for method, (config, reason) in cases.items():
        folder = _adapter(tmp_path / method, config)
        assert reason in adapter_refusal(_system(method), folder, max_lora_rank=64), method


def test_a_quantized_or_other_base_is_refused_whole(tmp_path):
    served = tmp_path / "base"
    served.mkdir()
    base = VllmModel("smollm2", str(served))
    assert base_refusal(_system("lora", base=str(served)), base) is None
    assert "4-bit base" in base_refusal(_system("qlora", bits=4, base=str(served)), base)
    assert f"the vLLM server serves {served}" in base_refusal(_system("lora", base=str(tmp_path / "other")), base)
    # a remote server's folder does not exist here: it is taken as the systems' base (docs/serving.md)
    assert base_refusal(_system("lora", base="/x"), VllmModel("m", "/nowhere/on/this/machine")) is None


def _row(params: SamplingParams, ids=(5, 6, 7)) -> Row:
    return Row(list(ids), params, Route(("t",), lambda: None), lambda event: None, None, frozenset({2, 0}))


def test_a_refused_request_fails_with_the_reason_and_the_fix():
    lane = Lane(SimpleNamespace(base=VllmModel("base", "/b")), None, "triage@v3 is a ia3 system")
    with pytest.raises(ValueError, match="triage@v3 is a ia3 system. Serve it with --engine builtin, or start the "
                                         "server with --vllm-fallback builtin"):
        lane.submit(_row(SamplingParams(4)), use_adapter=True)
    with pytest.raises(ValueError, match="4-bit base"):
        _Refused("triage@v3 runs on a 4-bit base").submit(_row(SamplingParams(4)), use_adapter=False)


def test_a_row_becomes_the_exact_prompt_ids_with_its_sampling_fields():
    engine = VllmEngine("http://127.0.0.1:9/")
    greedy = engine.body(_row(SamplingParams(32)), "triage@v1")
    assert greedy == {"model": "triage@v1", "prompt": [5, 6, 7], "max_tokens": 32, "stream": True,
                      "stream_options": {"include_usage": True}, "temperature": 0.0, "stop_token_ids": [0, 2],
                      "skip_special_tokens": True}
    sampled = engine.body(_row(SamplingParams(8, 0.7, 0.9, 11, ("\n",), True, 2)), "base")
    assert sampled == greedy | {"model": "base", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 11,
                                     "stop": ["\n"], "logprobs": 2, "return_tokens_as_token_ids": True}
    with pytest.raises(ValueError, match="response_format json_object / json_schema is not supported with --engine"):
        row = _row(SamplingParams(4))
        row.params = SamplingParams(4, grammar="start: /x/")  # (a real grammar's matcher needs a real tokenizer)
        engine.submit(row, "base")


def test_vllm_logprobs_become_token_choices_cut_to_top_n():
    chunk = {"tokens": ["token_id:6178"], "token_logprobs": [-5.74],
             "top_logprobs": [{"token_id:6178": -5.74, "token_id:79": -4.49, "token_id:4534": -4.94}]}
    (choice,) = _token_choices(chunk, 2)
    assert (choice.token, choice.logprob, choice.top) == (6178, -5.74, [(79, -4.49), (4534, -4.94)])


def test_launch_needs_a_venv_with_vllm_and_says_how_to_get_one(tmp_path):
    start = VllmStart(tmp_path / "model", "base", tmp_path / "no-venv")
    with pytest.raises(VllmStartError, match="install it with `make vllm`, or point --vllm-venv"):
        vllm_command(start, 8001)


def test_launch_command_serves_the_folder_in_fp32_with_runtime_lora(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "lib" / "python3.11" / "site-packages" / "vllm").mkdir(parents=True)
    (venv / "lib" / "python3.11" / "site-packages" / "vllm" / "__init__.py").write_text("")
    command = vllm_command(VllmStart(tmp_path / "model", "base", venv, max_lora_rank=16), 8001)
    assert command[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp_path / "model")]
    joined = " ".join(command)
    assert "--dtype float32" in joined and "--enable-lora" in joined and "--max-lora-rank 16" in joined


def test_waiting_for_health_times_out_with_the_option_to_raise():
    with pytest.raises(VllmStartError, match=r"not healthy after 1 s \(--vllm-timeout\)"):
        wait_healthy("http://127.0.0.1:9", None, 1.0)


def test_health_names_the_engine(tmp_path):
    from fastapi.testclient import TestClient

    from flows.api import create_app

    (tmp_path / "registry").mkdir()
    with TestClient(create_app(_registry(tmp_path))) as client:
        assert client.get("/health").json()["engine"] == {"engine": "builtin"}


def _registry(tmp_path):
    from components.registry import Registry

    return Registry(tmp_path / "registry")
