"""Forgetting on lm-evaluation-harness tasks (`evaluation.forgetting.harness`, components.evaluation.harness), in process.

A tiny random Llama with a perturbed LoRA adapter (seconds on one core), a spec naming two local task YAMLs over
our own data (the triage labels as a multiple_choice task, the general-text sample as a loglikelihood_rolling one),
evaluated by `components.evaluation.arms.evaluate`. The report's base and adapted scores must be what lm-eval's own
`simple_evaluate` gives for the same LM, and what lm-eval's `hf` backend gives for the same weights (the base alone,
and the base with the adapter through its `peft=` argument): an oracle that shares none of our scoring code.

Marked `harness`; skipped where lm-eval is not installed (`pip install 'adaptflow[harness]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from components.spec.evaluation import HARNESS_INSTALL, harness_installed
from tests.conftest import make_tiny_llama

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "harness" / "tasks"
LIMIT = 4

pytestmark = [
    pytest.mark.harness,
    pytest.mark.skipif(not harness_installed(), reason=f"lm-eval is not installed: {HARNESS_INSTALL}"),
    pytest.mark.usefixtures("one_thread"),
]


def local_tasks(folder: Path) -> list[Path]:
    """Our two task YAMLs with their data paths made absolute (lm-eval reads them relative to the working folder)."""
    folder.mkdir()
    out = []
    for name, data in (("triage_choice", "specs/data/triage/eval.jsonl"), ("general_text", "components/resources/general.txt")):
        text = (TASKS / f"{name}.yaml").read_text()
        assert data in text
        (folder / f"{name}.yaml").write_text(text.replace(data, str(REPO / data)))
        out.append(folder / f"{name}.yaml")
    return out


@pytest.fixture(scope="module")
def adapted(tiny_llama_dir, tokenizer, tmp_path_factory):
    """A LoRA adapter on the tiny Llama, perturbed so the adapted scores differ from the base's."""
    from components.methods.io import save_adapter
    from components.methods.registry import apply_method
    from components.spec import AdapterSpec

    adapter = TypeAdapter(AdapterSpec).validate_python({"method": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]})
    model = apply_method(make_tiny_llama(tokenizer), adapter, total_steps=10)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(torch.randn_like(param) * 0.2)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    save_adapter(model, adapter, folder)
    return folder


def write_spec(root: Path, base: Path, tasks: list[Path]) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"ticket {n}"}, {"role": "assistant", "content": "billing"}]}
            for n in range(3)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "qa.jsonl").write_text("\n".join(json.dumps({"question": f"ticket {n}", "answer": "billing"})
                                             for n in range(3)) + "\n")
    spec = root / "spec.yaml"
    spec.write_text(f"""name: tiny-forgetting
goal: behavior
base_model: {{id: {base}}}
behavior:
  data: {{train: train.jsonl, format: chat}}
  adapter: {{method: lora, r: 4, target_modules: [q_proj, v_proj]}}
evaluation:
  data: qa.jsonl
  max_new_tokens: 4
  forgetting:
    harness: [{', '.join(f'tasks/{t.name}' for t in tasks)}]
    limit: {LIMIT}
    apply_chat_template: true
""")
    return spec


def by_key(results: dict) -> dict[tuple[str, str], float]:
    return {(task, key): value for task, scores in results["results"].items() for key, value in scores.items()
            if "," in key and isinstance(value, int | float)}


def test_the_report_holds_each_task_base_and_adapted_with_stderr_as_lm_eval_scores_them(
        tiny_llama_dir, adapted, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from adaptflow.system import System
    from components.evaluation.arms import evaluate
    from components.evaluation.harness import BOOTSTRAP_ITERS, system_lm
    from components.spec.load import load_spec
    from flows.summary import forgetting_lines

    tasks = local_tasks(tmp_path / "tasks")
    spec = load_spec(write_spec(tmp_path, tiny_llama_dir, tasks), workspace=tmp_path.parent)  # the tiny base lives beside it
    system = System("tiny-forgetting@v1", spec, adapted, None)
    report = evaluate(system, spec, ["base", "adapter"], tmp_path / "eval", ceilings=False)

    record = report["forgetting"]["harness"]
    assert record["lm_eval"] == lm_eval.__version__ and record["limit"] == LIMIT
    assert record["tasks"] == ["triage_choice.yaml", "general_text.yaml"]
    rows = {(r["task"], r["metric"]): r for r in record["rows"]}
    assert set(rows) == {("triage_choice", "acc,none"), ("triage_choice", "acc_norm,none"),
                         ("general_text", "word_perplexity,none"), ("general_text", "byte_perplexity,none"),
                         ("general_text", "bits_per_byte,none")}
    assert all(r["samples"] == LIMIT for r in rows.values())
    acc = rows[("triage_choice", "acc,none")]
    assert acc["base_stderr"] is not None and acc["adapted_stderr"] is not None  # the harness's stderr of a mean
    ppl = rows[("general_text", "word_perplexity,none")]
    assert not ppl["higher_is_better"] and ppl["drop"] == pytest.approx(ppl["adapted"] - ppl["base"], abs=1e-5)
    assert ppl["adapted"] != ppl["base"]  # the adapter changed the scores
    assert "harness_seconds" in report["timings"]
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["forgetting"]["harness"] == record  # the registered report holds it; its wall time does not
    assert "Forgetting on lm-evaluation-harness tasks" in (tmp_path / "eval" / "report.md").read_text()
    summary = "\n".join(forgetting_lines(written))
    assert "forgetting on lm-eval tasks" in summary and "triage_choice  acc,none" in summary

    # the same LM through lm-eval's own API: the report's numbers, exactly
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    direct = {}
    for use_adapter in (False, True):
        run = lm_eval.simple_evaluate(model=system_lm(system, use_adapter), tasks=[str(t) for t in tasks],
                                      task_manager=manager, limit=LIMIT, apply_chat_template=True,
                                      log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS)
        direct[use_adapter] = by_key(run)
    for key, row in rows.items():
        assert row["base"] == pytest.approx(direct[False][key], abs=1e-6)
        assert row["adapted"] == pytest.approx(direct[True][key], abs=1e-6)
        if row["base_stderr"] is not None:
            stderr = key[1].replace(",", "_stderr,")
            assert row["base_stderr"] == pytest.approx(direct[False][(key[0], stderr)], abs=1e-6)

    # lm-eval's `hf` backend on the same weights (base, and base + adapter via peft=): an independent oracle
    for use_adapter in (False, True):
        args = {"pretrained": str(tiny_llama_dir), "device": "cpu", "dtype": "float32", "batch_size": 1}
        run = lm_eval.simple_evaluate(model="hf", model_args=args | ({"peft": str(adapted)} if use_adapter else {}),
                                      tasks=[str(t) for t in tasks], task_manager=manager, limit=LIMIT,
                                      apply_chat_template=True, log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS)
        oracle = by_key(run)
        for key, row in rows.items():
            assert row["adapted" if use_adapter else "base"] == pytest.approx(oracle[key], rel=1e-4), key
