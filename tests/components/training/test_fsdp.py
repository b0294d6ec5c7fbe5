"""FSDP passed through as an accelerate config: 2 CPU processes (gloo; torch's FSDP2 `fully_shard`, and FSDP1, through
`accelerator.prepare`) against the one-process loop, and the config checks `validate` runs.

An accelerate config with `distributed_type: FSDP` goes to `accelerate launch --config_file` as is; the ranks build
their Accelerator from the environment accelerate sets (components.training.sharding). The adapter from 2 sharded processes
equals the one-process adapter within 1e-5 (fp32): FSDP averages the gradients, the loop scales each rank's loss by
the number of ranks, and what is left is float summation order (bench/ddp.py reports the gap). LoRA dropout is 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from peft import PeftModel
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from components.spec import TaskSpec
from components.spec import accelerate as accelerate_config
from components.training import checkpoint, distributed
from tests.components.training.test_distributed import adapter, max_diff, one_process

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOLERANCE = 1e-5  # fp32, as for DDP (the goal)
CPU = {"CUDA_VISIBLE_DEVICES": ""}
REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_config(folder: Path, **fsdp) -> Path:
    """What `accelerate config` writes for FSDP2 on one machine with 2 processes, layers wrapped one by one."""
    path = folder / "fsdp.yaml"
    path.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "no",
        "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer", "fsdp_reshard_after_forward": True,
                        "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_cpu_ram_efficient_loading": False, **fsdp},
        "machine_rank": 0, "num_machines": 1, "num_processes": 2, "main_process_port": _free_port(),
        "use_cpu": False, "rdzv_backend": "static", "same_network": True}))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """9 rows of different lengths: the last micro-batch of 4 has one row, so rank 1's share is empty (it must still
    run a forward and backward pass: FSDP's collectives need every rank)."""
    path = tmp_path_factory.mktemp("fsdp-data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Is {n} even?" + " really" * (n % 4)},
                          {"role": "assistant", "content": ("yes" if n % 2 == 0 else "no, it is odd") * (1 + n % 3)}]}
            for n in range(9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task(model_dir: Path, data_file: Path, config: Path | None, method: str = "lora", **training) -> TaskSpec:
    dist = {"distributed": {"processes": 2, "config": str(config)}} if config else {}
    adapter = {"method": method, "r": 4, "dropout": 0.0} if method in ("lora", "dora") else {"method": method}
    return TaskSpec.model_validate({
        "name": "tiny-fsdp", "goal": "behavior",
        "base_model": {"id": str(model_dir), "allow_outside_workspace": True},
        "behavior": {
            "data": {"train": str(data_file), "eval": str(data_file)},
            "adapter": adapter,
            "training": {"max_steps": 6, "batch_size": 4, "grad_accum": 2, "lr": 1.0e-3, "checkpoint_every": 2,
                         "eval_every": 3, "seed": 3, "precision": "fp32", "schedule": "constant", "warmup_ratio": 0,
                         **dist, **training},
        },
    })


VERSIONS = {2: {}, 1: {"fsdp_version": 1, "fsdp_reshard_after_forward": "FULL_SHARD", "fsdp_use_orig_params": True,
                       "fsdp_sync_module_states": False}}  # FSDP1 on CPU: no device to sync module states on


@pytest.mark.parametrize("version", [2, 1])
def test_two_fsdp_processes_train_the_adapter_one_process_trains(tmp_path, tiny_llama_dir, data_file, version):
    single = one_process(task(tiny_llama_dir, data_file, None), tmp_path / "one")
    seen = []
    config = fsdp_config(tmp_path, **VERSIONS[version])
    record = distributed.launch(task(tiny_llama_dir, data_file, config), tmp_path / "two", env=CPU,
                                progress=lambda step, total, metrics: seen.append(step))
    # sharded for real: rank 0 held about half the weights
    shard = record["sharding"]
    assert shard["engine"] == "FSDP (accelerate)" and shard["fsdp_version"] == version, shard
    assert shard["rank0_parameters"] < 0.6 * shard["parameters"], shard
    assert record["processes"] == 2 and seen == [1, 2, 3, 4, 5, 6]
    diff = max_diff(adapter(tmp_path / "one"), adapter(tmp_path / "two"))
    assert diff <= TOLERANCE, diff
    steps = zip(single.loss_curve, record["loss_curve"], strict=True)
    assert max(abs(a[1] - b[1]) for a, b in steps) < 1e-5
    assert [e[0] for e in record["eval_history"]] == [3, 6]
    assert abs(record["eval_history"][-1][1] - single.eval_history[-1][1]) < 1e-5
    assert record["train_tokens"] == single.train_tokens
    assert record["generation"]["passed"] is True
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path / "two" / "checkpoints")] == [
        "step-000004", "step-000006"]
    assert not (tmp_path / "two" / distributed.ERROR_FILE).exists()

    # the saved adapter is a vanilla peft folder, gathered whole: it loads with PeftModel.from_pretrained
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path / "two" / "adapter")
    weights = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert len(weights) == len(adapter(tmp_path / "two")) == 8
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        tuned = loaded(input_ids=ids).logits
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits
    assert (tuned - plain).abs().max() > 1e-6

    # an FSDP checkpoint has the one-process layout: a single process resumes it to the same adapter
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    src = tmp_path / "two" / "checkpoints" / "step-000004"
    (resumed / "checkpoints" / src.name).mkdir()
    for f in src.iterdir():
        (resumed / "checkpoints" / src.name / f.name).write_bytes(f.read_bytes())
    again = one_process(task(tiny_llama_dir, data_file, None), resumed)
    assert again.resumed_from_step == 4
    assert max_diff(adapter(tmp_path / "one"), adapter(resumed)) <= TOLERANCE


@pytest.mark.parametrize("method", ["dora", "ia3", "loha", "lokr"])
def test_other_module_adapters_under_fsdp2(tmp_path, tiny_llama_dir, data_file, method):
    """The other methods that add modules beside the base's (no extra loss, no per-step hook, no soft prompt). LoHa
    at the spec's default lr: at 1e-3 its 2-process adapter, under DDP as under FSDP (those two within 1.2e-7), is
    3.6e-5 from one process's (Adam enlarging summation-order differences, bench/ddp.py)."""
    lr = {"lr": 2.0e-4} if method == "loha" else {}
    one_process(task(tiny_llama_dir, data_file, None, method=method, max_steps=3, **lr), tmp_path / "one")
    record = distributed.launch(task(tiny_llama_dir, data_file, fsdp_config(tmp_path), method=method, max_steps=3, **lr),
                                tmp_path / "two", env=CPU)
    assert record["method"] == method and record["generation"]["passed"] is True
    assert max_diff(adapter(tmp_path / "one"), adapter(tmp_path / "two")) <= TOLERANCE


def test_fsdp_resumes_a_checkpoint(tmp_path, tiny_llama_dir, data_file):
    """2 FSDP processes resume from step 4 (written by one process: the same layout) and end with the uninterrupted
    one-process adapter: the full checkpoint is scattered into the shards (torch's set_state_dict)."""
    config = fsdp_config(tmp_path)
    one_process(task(tiny_llama_dir, data_file, None, max_steps=4), tmp_path / "run")  # constant lr: steps 1-4 as in 6
    record = distributed.launch(task(tiny_llama_dir, data_file, config), tmp_path / "run", env=CPU)
    assert record["resumed_from_step"] == 4 and record["steps"] == 6
    one_process(task(tiny_llama_dir, data_file, None), tmp_path / "one")
    assert max_diff(adapter(tmp_path / "one"), adapter(tmp_path / "run")) <= TOLERANCE


def test_cpu_ram_efficient_loading_broadcasts_rank_0s_weights(tmp_path, tiny_llama_dir, data_file):
    """`fsdp_cpu_ram_efficient_loading: true`: transformers loads the weights on rank 0 only (the other ranks build the
    model on the meta device) and accelerate's `prepare` broadcasts them; the adapter is the one-process one."""
    config = fsdp_config(tmp_path, fsdp_cpu_ram_efficient_loading=True, fsdp_sync_module_states=True)
    one_process(task(tiny_llama_dir, data_file, None, max_steps=2), tmp_path / "one")
    record = distributed.launch(task(tiny_llama_dir, data_file, config, max_steps=2), tmp_path / "two", env=CPU)
    assert record["sharding"]["rank0_parameters"] < 0.6 * record["sharding"]["parameters"]
    assert max_diff(adapter(tmp_path / "one"), adapter(tmp_path / "two")) <= TOLERANCE


def _ranks_of(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True)
                if "components.training.distributed" in p.cmdline() and "rank" in p.cmdline()]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_killed_fsdp_run_resumes_to_the_same_adapter(tmp_path, tiny_llama_dir, data_file):
    """SIGKILL to the launcher's group mid-run under FSDP: no rank survives; the rerun's ranks scatter rank 0's last
    complete checkpoint into their shards and end with the uninterrupted one-process adapter."""
    spec = task(tiny_llama_dir, data_file, fsdp_config(tmp_path), max_steps=40, checkpoint_every=4)
    out = tmp_path / "killed"
    out.mkdir()
    job = out / "ddp-job.json"
    job.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "out_dir": str(out)}))
    cmd = [sys.executable, "-m", "components.training.distributed", "launch",
           *distributed.launch_args(spec.behavior.training.distributed, job)]
    with (out / "launch.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=distributed._env(CPU), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline, ranks = time.monotonic() + 120, []
    while not checkpoint.complete_checkpoints(out / "checkpoints"):
        assert proc.poll() is None, (out / "launch.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        ranks = _ranks_of(proc.pid) or ranks
        time.sleep(0.1)
    ranks = _ranks_of(proc.pid) or ranks
    assert len(ranks) == 2, [r.cmdline() for r in ranks]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, f"ranks outlived the launcher: {[p.pid for p in alive]}"
    assert not (out / "adapter").exists(), "training finished before the kill; raise max_steps"

    record = distributed.launch(spec, out, env=CPU)
    assert record["resumed_from_step"] and record["resumed_from_step"] >= 4 and record["steps"] == 40
    one_process(task(tiny_llama_dir, data_file, None, max_steps=40, checkpoint_every=4), tmp_path / "one")
    assert max_diff(adapter(tmp_path / "one"), adapter(out)) <= TOLERANCE


# --- the config, checked at validate time ---------------------------------------------------------------------


def _refusal(tmp_path, tiny_llama_dir, data_file, config: dict | str, method: str = "lora") -> str:
    path = tmp_path / "accel.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    with pytest.raises(ValidationError) as err:
        task(tiny_llama_dir, data_file, path, method=method)
    message = str(err.value)
    assert f"training.distributed.config {path}" in message, message
    return message


def test_configs_the_loop_cannot_run_are_refused_at_validate(tmp_path, tiny_llama_dir, data_file):
    fsdp = {"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 2}}
    cases = [
        ("distributed_type: [FSDP\n", "not a readable accelerate config"),
        ("- FSDP\n", "an accelerate config is a YAML mapping"),
        ({"num_processes": 2}, "field `distributed_type` is missing"),
        ({"distributed_type": "MEGATRON_LM"}, "distributed_type MEGATRON_LM is not supported"),
        ({**fsdp, "use_cpu": True}, "set use_cpu: false"),
        ({**fsdp, "mixed_precision": "fp16"}, "set mixed_precision to bf16 or no"),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 3}}, "fsdp_config.fsdp_version is 3"),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 1, "fsdp_use_orig_params": False}},
         "set fsdp_use_orig_params: true"),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_activation_checkpointing": True}},
         "set behavior.training.gradient_checkpointing instead"),
    ]
    for config, expected in cases:
        assert expected in _refusal(tmp_path, tiny_llama_dir, data_file, config), config
    message = _refusal(tmp_path, tiny_llama_dir, data_file, fsdp, method="adalora")
    assert "adapter.method adalora, which is not built under FSDP" in message and "MULTI_GPU" in message


def test_deepspeed_is_refused_with_the_way_out(tmp_path, tiny_llama_dir, data_file):
    import importlib.util

    message = _refusal(tmp_path, tiny_llama_dir, data_file, {"distributed_type": "DEEPSPEED"})
    assert "DEEPSPEED, which adaptflow does not drive" in message and "fsdp_version: 2" in message
    if importlib.util.find_spec("deepspeed") is None:
        assert "DeepSpeed is not installed here: `pip install deepspeed`" in message


def test_configs_the_loop_runs_pass(tmp_path, tiny_llama_dir, data_file):
    for config in ({"distributed_type": "MULTI_GPU", "num_machines": 2, "machine_rank": 0},
                   {"distributed_type": "MULTI_CPU", "use_cpu": True},
                   {"distributed_type": "FSDP", "mixed_precision": "bf16",
                    "fsdp_config": {"fsdp_version": 2, "fsdp_cpu_ram_efficient_loading": True}}):
        path = tmp_path / "ok.yaml"
        path.write_text(yaml.safe_dump(config))
        assert accelerate_config.problem(path, "lora") is None
        task(tiny_llama_dir, data_file, path)  # validates
    assert accelerate_config.problem(path, "prompt_tuning") is not None  # FSDP: methods that add modules only


def test_validate_names_the_spec_line_the_key_and_the_config_file(tmp_path, monkeypatch):
    from components.spec.load import SpecError, load_spec

    (tmp_path / "train.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "ds.yaml").write_text("distributed_type: DEEPSPEED\n")
    (tmp_path / "s.yaml").write_text(
        "name: t\ngoal: behavior\nbehavior:\n  data: {train: train.jsonl}\n"
        "  training: {batch_size: 8, distributed: {processes: 2, config: ds.yaml}}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "s.yaml", workspace=tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 's.yaml'} line 5: behavior.training.distributed: "
                              f"training.distributed.config {tmp_path / 'ds.yaml'}: distributed_type is DEEPSPEED"), message
