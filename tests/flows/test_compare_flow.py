"""The compare flow on tiny in-process models: one sweep, real stages, registry entries, then a re-run that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.registry import Registry

pytestmark = pytest.mark.integration


def _stamps(root: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in (root / "stages").glob("*/*/stage.json")}


def test_sweep_reports_registers_each_variant_then_reuses_everything(prefect_api, isolated, make_workspace):
    from flows.compare import compare

    spec = make_workspace(goal="both", gates='{contains_answer: ">= 0.0"}', max_steps=2)
    spec.write_text(spec.read_text() + "compare:\n  methods: [lora, full]\n  select: smallest_passing\n")

    out = compare(str(spec), max_parallel=2)

    report = json.loads(Path(out["report"]).read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["lora", "full"] and not any(r["error"] for r in rows.values())
    for vid, row in rows.items():
        version = Registry().open(row["ref"])  # hashes verified
        assert version.name == f"tiny-both--{vid}"
        record = json.loads((version.path / "adapter" / "train_record.json").read_text())
        assert record["method"] == vid and record["trainable_params"] == row["trainable_params"] > 0
        assert set(row["scores"]) == {"base", "adapter", "base+retrieval", "adapter+retrieval", "gold-context",
                                      "adapter+gold-context"}
    assert rows["full"]["trainable_params"] > rows["lora"]["trainable_params"]
    assert any(r["pareto_params"] for r in rows.values()) and any(r["pareto_time"] for r in rows.values())
    smallest = "lora"  # fewer trainable parameters than full; both pass the >= 0 gate
    assert report["selection"]["chosen"] == smallest and "fewest trainable parameters" in report["selection"]["reason"]

    selected = Registry().open(out["selected"])
    assert selected.ref == "tiny-both@v1" and selected.manifest["selection"]["variant"] == smallest
    assert selected.manifest["spec"]["behavior"]["adapter"]["method"] == smallest
    assert Registry().aliases("tiny-both") == {"latest": 1, "production": 1}
    assert out["stages"] == {v: {"train": "ran", "eval": "ran"} for v in rows}
    comparison = Registry().open(out["comparison"])
    assert comparison.ref == "tiny-both--compare@v1"
    assert (comparison.path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lora | lora |" in (comparison.path / "report.md").read_text()

    stamps = _stamps(isolated)
    again = compare(str(spec))  # nothing changed: no stage runs, no new version anywhere
    assert _stamps(isolated) == stamps
    assert {k: again[k] for k in ("comparison", "selected")} == {k: out[k] for k in ("comparison", "selected")}
    assert again["stages"] == {v: {"train": "cached", "eval": "cached"} for v in rows}
    for name in ("tiny-both", "tiny-both--compare", *(f"tiny-both--{v}" for v in rows)):
        assert [v.number for v in Registry().versions(name)] == [1]


def test_cli_names_a_bad_method_or_rule_before_anything_runs(isolated, make_workspace):
    from typer.testing import CliRunner

    from flows.cli import app

    spec = str(make_workspace(goal="behavior"))
    result = CliRunner().invoke(app, ["compare", spec, "--methods", "lora,lorra"])
    assert result.exit_code == 1 and "unknown method 'lorra'; use one of lora, dora" in result.output
    result = CliRunner().invoke(app, ["compare", spec, "--select", "cheapest"])
    assert result.exit_code == 1 and "--select 'cheapest' is unknown; use one of best_score, smallest_passing" in result.output
