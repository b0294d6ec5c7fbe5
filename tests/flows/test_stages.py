"""The stage seam (flows/stages.py): computed once per key, reused after, typed on the way out; and the
compare child and the UI module stay apart (no import cycle, no specs/ glob at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from flows.keys import store
from flows.stages import Evaluated, Trained, done, run_stage

REPO = Path(__file__).resolve().parents[2]


def write_eval(key: str, calls: list[str], pause: float = 0.0) -> Path:
    """A real eval stage body: write report.json into the work folder, commit it with its timings."""
    calls.append(key)
    time.sleep(pause)
    work = store().work("eval", key)
    (work / "eval").mkdir(exist_ok=True)
    (work / "eval" / "report.json").write_text(json.dumps({"metrics": {"answer_f1": 0.5}, "main_arm": "base"}))
    return store().commit("eval", key, {"timings": {"base": 1.5}})


def test_a_stage_is_computed_once_then_reused_and_read_through_its_type(isolated):
    calls: list[str] = []
    first = run_stage("eval", "k1", write_eval, "k1", calls)
    again = run_stage("eval", "k1", write_eval, "k1", calls)
    assert calls == ["k1"]
    assert isinstance(first, Evaluated) and not first.cached and again.cached and again.path == first.path
    assert again.report()["metrics"] == {"answer_f1": 0.5} and again.record() == {"base": 1.5}
    assert done("eval", "k1") == again and done("eval", "other") is None


def test_two_runs_missing_one_key_at_once_compute_it_once(isolated):
    calls: list[str] = []
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_stage("eval", "k2", write_eval, "k2", calls, 0.5)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["k2"]
    assert sorted(r.cached for r in results) == [False, True] and results[0].path == results[1].path


def test_a_trained_stage_reads_its_adapter_and_record(isolated):
    work = store().work("train", "t1")
    (work / "adapter").mkdir()
    (work / "train_record.json").write_text(json.dumps({"method": "lora", "steps": 4}))
    store().commit("train", "t1", {"record": {}}, keep=("adapter", "train_record.json"))
    trained = done("train", "t1")
    assert isinstance(trained, Trained) and trained.adapter.is_dir() and trained.record()["steps"] == 4


def _imports_after(code: str, cwd: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    probe = code + "\nimport json, sys; print(json.dumps(sorted(m for m in sys.modules if m.startswith('flows.'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_compare_child_does_not_import_the_ui_module(tmp_path):
    assert "flows.deployments" not in _imports_after("import flows.compare_child, flows.compare", tmp_path)


def test_the_ui_module_lists_specs_when_its_flows_are_built_not_when_imported(tmp_path):
    (tmp_path / "specs").mkdir()
    code = ("import flows.deployments as d\n"
            "assert d.ui_flows.cache_info().currsize == 0, 'built at import'\n"
            "import pathlib\n"
            "for name in ('late', 'later'): pathlib.Path(f'specs/{name}.yaml').write_text(f'name: {name}\\n')\n"
            "schema = d.adapt_ui.parameters.model_dump()['properties']['spec']\n"
            "assert schema['enum'] == ['specs/late.yaml', 'specs/later.yaml'], schema\n")
    _imports_after(code, tmp_path)
