"""lm-evaluation-harness against a real `adaptflow serve` (docs/harness.md): the registered support-triage system,
one generate_until task through `local-chat-completions` and one multiple_choice task through `local-completions`
(echo + logprobs), both local task YAMLs over our own triage data (tests/harness/tasks/).

The harness's exact-match score of the generate task must be the registered evaluation report's accuracy: the same
system, the same prompts (the chat template over the same messages), greedy decoding, the same scoring rule.

`make test-harness` runs it: it installs lm-eval into .venv-harness (apart from the project's venv) and sets
ADAPTFLOW_HARNESS=1; `make test` skips it. The triage system is trained once into a registry under
$ADAPTFLOW_HOME/harness (about ten CPU minutes on two cores); later runs find it up to date in a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from components.registry import Registry
from tests.flows.serve_helpers import running_server

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "harness" / "tasks"
LM_EVAL = Path(os.environ.get("ADAPTFLOW_LM_EVAL", REPO / ".venv-harness" / "bin" / "lm_eval"))
SPEC = "specs/support-triage.yaml"

pytestmark = [
    pytest.mark.harness,
    pytest.mark.skipif(os.environ.get("ADAPTFLOW_HARNESS") != "1", reason="run by `make test-harness`"),
]


@pytest.fixture(scope="module")
def registry() -> Path:
    """The registry holding support-triage, registered by `adaptflow run` (kept: a rerun is up to date)."""
    from components.store.fileio import adaptflow_home

    root = Path(os.environ.get("ADAPTFLOW_HARNESS_REGISTRY", adaptflow_home() / "harness" / "registry"))
    env = os.environ | {"ADAPTFLOW_REGISTRY": str(root)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", SPEC], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\nadaptflow run {SPEC}: {time.monotonic() - started:.0f} s; {done.stdout.strip().splitlines()[-1]}")
    return root


@pytest.fixture(scope="module")
def served(registry, tmp_path_factory):
    with running_server(registry, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def lm_eval(out: Path, *args: str) -> dict:
    """One `lm_eval` run from the repository root (the task YAMLs' data paths are relative to it); its results."""
    cache = out / "hf"
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
                        "HF_HOME": str(cache), "OPENAI_API_KEY": "unused-on-loopback"}
    started = time.monotonic()
    done = subprocess.run([str(LM_EVAL), "run", "--include_path", str(TASKS), "--output_path", str(out), "--log_samples",
                           "--apply_chat_template", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(f"lm_eval {' '.join(args)}: {time.monotonic() - started:.0f} s")
    (found,) = out.rglob("results_*.json")
    return json.loads(found.read_text())


def samples(out: Path, task: str) -> list[dict]:
    (found,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in found.read_text().splitlines()]


def statuses(url: str) -> dict[str, float]:
    """adaptflow_requests_total by endpoint and status, from /metrics."""
    counts = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("adaptflow_requests_total{"):
            pairs = (part.split("=") for part in line[line.index("{") + 1:line.index("}")].split(","))
            labels = {k: v.strip('"') for k, v in pairs}
            key = f"{labels['endpoint']} {labels['status']}"
            counts[key] = counts.get(key, 0) + float(line.split()[-1])
    return counts


def test_lm_eval_scores_the_served_system_as_its_evaluation_did(registry, served, tmp_path):
    version = Registry(registry).resolve("support-triage@latest")
    report = json.loads((version.path / "eval" / "report.json").read_text())
    accuracy = report["metrics"]["accuracy"]  # the main arm's (adapter, no retrieval)
    from components.models.load import builtin_model_dir

    common = f"model={version.ref},num_concurrent=1,max_retries=1,timeout=600"  # one try: a failure is an error
    generated = lm_eval(tmp_path / "generate", "--model", "local-chat-completions", "--tasks", "triage_generate",
                        "--model_args", f"{common},base_url={served}/v1/chat/completions")
    chosen = lm_eval(tmp_path / "choice", "--model", "local-completions", "--tasks", "triage_choice", "--batch_size", "6",
                     "--model_args", f"{common},base_url={served}/v1/completions,tokenizer_backend=huggingface,"
                                     f"tokenizer={builtin_model_dir(verify=False)}")

    exact = generated["results"]["triage_generate"]["exact_match,first_label"]
    acc = chosen["results"]["triage_choice"]["acc,none"]
    print(f"{version.ref}: report accuracy {accuracy:.4f}; lm-eval triage_generate exact_match {exact:.4f}, "
          f"triage_choice acc {acc:.4f} (acc_norm {chosen['results']['triage_choice']['acc_norm,none']:.4f})")
    assert exact == pytest.approx(accuracy, abs=0.01)
    rows = samples(tmp_path / "choice", "triage_choice")
    assert len(rows) == 60 and all(len(r["resps"]) == 6 for r in rows)  # six labels scored per ticket
    assert all(float(r["resps"][0][0][0]) < 0 for r in rows)  # real log-likelihoods came back
    assert acc > 0.5  # the adapter learned the labels: far above chance (1/6)
    counts = statuses(served)
    # 0 errors: every request answered 200 (60 chats; 360 label scorings, six prompts a request)
    assert counts == {"chat 200": 60.0, "completion 200": 60.0}, counts
