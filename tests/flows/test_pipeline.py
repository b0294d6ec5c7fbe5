"""The main flow end to end on tiny in-process models, against a real (temporary) Prefect API."""

from __future__ import annotations

import json

import pytest

from components.registry import Registry

pytestmark = pytest.mark.integration


def _stage_dirs(root, stage):
    return sorted(p.name for p in (root / "stages" / stage).iterdir() if p.is_dir() and not p.name.endswith(".work"))


def _stage_stamps(root) -> dict:
    """Completion markers of every stage output: unchanged stamps mean the stage did not run again."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (root / "stages").glob("*/*/stage.json")}


def test_both_spec_runs_end_to_end_then_reuses_everything(prefect_api, isolated, make_workspace):
    from flows.pipeline import adapt

    spec = make_workspace(gates='{hit_at_k: ">= 0.0"}')
    ref = adapt(str(spec))
    assert ref == "tiny-both@v1"
    version = Registry().open(ref)  # hashes verified
    report = json.loads((version.path / "eval" / "report.json").read_text())
    assert set(report["arms"]) == {"base", "adapter", "base+retrieval", "adapter+retrieval", "gold-context",
                                   "adapter+gold-context"}  # the ceilings: rows carry doc_ids
    assert set(report["ceiling"]["arms"]) == {"base+retrieval", "adapter+retrieval"}
    for arm in report["arms"].values():
        assert {"exact_match", "answer_f1", "contains_answer"} <= set(arm)
    assert {"hit_at_k", "mrr"} <= set(report["arms"]["adapter+retrieval"])
    assert "forgetting" in report["forgetting"] and report["efficiency"]["trainable_params"] > 0
    assert (version.path / "adapter" / "adapter_config.json").exists()
    assert (version.path / "index" / "index.faiss").exists()
    assert (version.path / "eval" / "loss.png").exists()
    manifest = version.manifest
    assert manifest["route"]["decision"] == "both" and manifest["gates"]["passed"]
    assert Registry().aliases("tiny-both") == {"latest": 1, "production": 1}
    stamps = _stage_stamps(isolated)
    assert len(stamps) == 3

    assert adapt(str(spec)) == "tiny-both@v1"  # nothing changed: nothing trained, embedded or registered
    assert _stage_stamps(isolated) == stamps
    assert [v.number for v in Registry().versions("tiny-both")] == [1]

    (isolated / "data" / "docs" / "new.md").write_text("# New\n\nThe Tessaly lighthouse is 41 metres tall.\n")
    assert adapt(str(spec)) == "tiny-both@v2"  # documents-only change: re-index, keep the adapter
    after = _stage_stamps(isolated)
    assert len(_stage_dirs(isolated, "train")) == 1 and len(_stage_dirs(isolated, "index")) == 2
    train_key = _stage_dirs(isolated, "train")[0]
    assert after[train_key] == stamps[train_key]


def test_failed_gate_registers_but_moves_no_alias(prefect_api, isolated, make_workspace):
    from flows.pipeline import adapt

    spec = make_workspace(goal="knowledge", gates='{exact_match: ">= 0.99"}')
    ref = adapt(str(spec))
    version = Registry().resolve(ref)
    assert version.manifest["gates"]["passed"] is False
    assert Registry().aliases("tiny-knowledge") == {}
    assert set(json.loads((version.path / "eval" / "report.json").read_text())["arms"]) == {"base", "base+retrieval",
                                                                                                  "gold-context"}


def test_two_runs_from_empty_caches_register_one_version(prefect_api, isolated, make_workspace, monkeypatch):
    """A new $ADAPTFLOW_HOME (another machine, a cleared cache) retrains and re-embeds the same inputs:
    wall times differ, the content does not, so the registry keeps one version."""
    from flows.pipeline import adapt

    spec = make_workspace(goal="both")
    for home in ("home-a", "home-b"):
        monkeypatch.setenv("ADAPTFLOW_HOME", str(isolated / home))
        monkeypatch.setenv("ADAPTFLOW_STAGES", str(isolated / home / "stages"))
        assert adapt(str(spec)) == "tiny-both@v1"
        assert list((isolated / home / "stages" / "train").glob("*/stage.json")), "the stage did not run here"
    [version] = Registry().versions("tiny-both")
    volatile = version.manifest["volatile"]
    assert volatile["eval"]["eval_seconds"] > 0 and "latency_p50_ms" in volatile["eval"]
    assert volatile["train"]["train_seconds"] > 0 and "build_seconds" in volatile["index"]
    info = json.loads((version.path / "index" / "index.json").read_text())
    assert not {"created_at", "build_seconds", "update"} & set(info)
    report = json.loads((version.path / "eval" / "report.json").read_text())
    assert "eval_seconds" not in report and not any("latency" in k for k in report["efficiency"])
    assert "train_seconds" not in json.loads((version.path / "adapter" / "train_record.json").read_text())
