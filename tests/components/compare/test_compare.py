"""Comparison logic on synthetic results: variant expansion, Pareto fronts, selection rules, the report."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from components import compare as cmp
from components.spec import TaskSpec
from components.spec.load import SpecError, load_spec

SPEC = """name: triage
base_model: {quantization: {bits: 8}}
behavior:
  data: {train: data/train.jsonl}
  adapter: {method: lora, r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj]}
evaluation:
  gates: {accuracy: ">= 0.8"}
"""


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"messages": []}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spec_with(ws, extra: str = "") -> TaskSpec:
    (ws / "s.yaml").write_text(SPEC + extra)
    return load_spec(ws / "s.yaml", workspace=ws)


# --- variants ------------------------------------------------------------------------------------


def test_default_variants_derive_quantization_and_reuse_the_specs_own_adapter(ws):
    spec = spec_with(ws)
    variants = {v.id: v for v in cmp.expand_variants(spec)}
    assert list(variants) == ["lora", "qlora", "ia3", "prompt-tuning", "full"]
    own = variants["lora"].spec
    # the stage keys hash exactly these, so `adaptflow run` and `compare` share the trained adapter
    assert own.behavior == spec.behavior and own.base_model == spec.base_model and own.name == "triage--lora"
    assert own.compare is None
    assert variants["qlora"].spec.base_model.quantization.bits == 4
    assert variants["qlora"].spec.behavior.adapter.target_modules is None  # qlora's default: the architecture's
    assert variants["full"].spec.base_model.quantization is None
    assert variants["ia3"].spec.base_model.quantization.bits == 8  # other methods keep the spec's base
    assert any("quantization: null" in d for d in variants["full"].derived)


def test_spec_variants_are_overrides_on_the_specs_adapter_or_the_methods_defaults(ws):
    spec = spec_with(ws, "compare:\n  methods: [full]\n  variants:\n    - {method: lora, r: 4}\n"
                         "    - {method: lora, r: 16, target_modules: all-linear}\n"
                         "    - {method: prompt_tuning, num_virtual_tokens: 8}\n  select: smallest_passing\n")
    variants = {v.id: v for v in cmp.expand_variants(spec)}
    assert list(variants) == ["full", "lora-r4", "lora-r16-all-linear", "prompt-tuning-nvt8"]
    r4 = variants["lora-r4"].spec.behavior.adapter
    assert (r4.r, r4.alpha, r4.target_modules) == (4, 16, ["q_proj", "k_proj", "v_proj"])
    assert variants["lora-r16-all-linear"].spec.behavior.adapter.target_modules == "all-linear"
    assert variants["prompt-tuning-nvt8"].spec.behavior.adapter.num_virtual_tokens == 8
    assert variants["lora-r4"].overrides == {"method": "lora", "r": 4}
    # --methods replaces the spec's list
    assert [v.id for v in cmp.expand_variants(spec, ["ia3", "lora", "ia3"])] == ["ia3", "lora"]


def test_learning_rate_follows_the_method_family_unless_compare_lr_names_one(ws):
    spec = spec_with(ws)
    lrs = {v.id: (v.spec.behavior.training.lr, v.derived) for v in cmp.expand_variants(spec)}
    own = spec.behavior.training.lr
    assert lrs["lora"] == (own, lrs["lora"][1]) and not any("training.lr" in d for d in lrs["lora"][1])
    assert lrs["qlora"][0] == own  # same low-rank family: the spec's rate
    assert (lrs["ia3"][0], lrs["prompt-tuning"][0], lrs["full"][0]) == (1e-2, 3e-2, 5e-5)
    assert any("training.lr: 5e-05 (weights methods' default" in d for d in lrs["full"][1])
    chosen = spec_with(ws, "compare:\n  lr: {full: 2.0e-5}\n")
    full = next(v for v in cmp.expand_variants(chosen) if v.id == "full")
    assert full.spec.behavior.training.lr == 2e-5 and "training.lr: 2e-05 (compare.lr.full)" in full.derived
    (ws / "bad.yaml").write_text(SPEC + "compare:\n  lr: {fulll: 1.0e-5}\n")
    with pytest.raises(SpecError, match="compare.lr"):
        load_spec(ws / "bad.yaml", workspace=ws)


def test_variant_errors_name_the_fix(ws):
    spec = spec_with(ws, "compare:\n  methods: [lora]\n  variants:\n    - {method: lora, r: 8}\n")
    with pytest.raises(cmp.CompareError, match="resolves to the same adapter as 'lora'; remove one"):
        cmp.expand_variants(spec)
    with pytest.raises(cmp.CompareError, match="unknown method 'lorra'; use one of lora, dora"):
        cmp.expand_variants(spec_with(ws), ["lorra"])
    long = TaskSpec.model_validate(spec.model_dump(mode="json") | {"name": "t" * 60, "compare": None})
    with pytest.raises(cmp.CompareError, match="shorten the spec's `name` to at most 49 characters"):
        cmp.expand_variants(long, ["prompt_tuning"])


def test_compare_section_is_strict(ws):
    (ws / "s.yaml").write_text(SPEC + "compare:\n  methods: [lora]\n  selct: best_score\n")
    with pytest.raises(SpecError, match="compare.selct: unknown key 'selct'; did you mean 'select'"):
        load_spec(ws / "s.yaml", workspace=ws)
    (ws / "k.yaml").write_text("name: k\nknowledge: {documents: data}\ncompare: {methods: [lora]}\n")
    with pytest.raises(SpecError, match="line 3: compare: compare is declared but the `behavior:` section is missing"):
        load_spec(ws / "k.yaml", workspace=ws)


def test_parallel_slots_need_cores_and_memory():
    assert cmp.parallel_slots(5, cpus=2, available_mb=20_000, per_variant_mb=2_000) == 1
    assert cmp.parallel_slots(5, cpus=16, available_mb=100_000, per_variant_mb=2_000) == 4
    assert cmp.parallel_slots(5, cpus=16, available_mb=5_000, per_variant_mb=2_000) == 2
    assert cmp.parallel_slots(2, cpus=64, available_mb=1e6, per_variant_mb=1) == 2


# --- Pareto fronts -------------------------------------------------------------------------------


def test_pareto_front_small_cases():
    assert cmp.pareto_front([(0.9, 100), (0.8, 10), (0.7, 50), (0.9, 100)]) == [True, True, False, True]
    assert cmp.pareto_front([(0.5, 10), (0.5, 20)]) == [True, False]  # same score, more cost: dominated
    assert cmp.pareto_front([]) == []


def test_pareto_front_against_a_sweep_oracle():
    """Oracle: walk by cost (ties: best score first); a point is on the front iff it beats every cheaper score."""
    rng = random.Random(0)
    for _ in range(200):
        pts = [(rng.choice([0.1, 0.5, 0.7, 0.9]), rng.choice([1, 10, 100, 1000])) for _ in range(rng.randint(1, 8))]
        best_at: dict[int, float] = {}
        for s, c in pts:
            best_at[c] = max(best_at.get(c, -1), s)
        expected = []
        for s, c in pts:
            cheaper = max((best_at[c2] for c2 in best_at if c2 < c), default=-1)
            expected.append(s == best_at[c] and s > cheaper)
        assert cmp.pareto_front(pts) == expected, pts


# --- selection and the report --------------------------------------------------------------------


def result(vid: str, score: float, params: int, seconds: float, passed: bool = True, error: str | None = None):
    if error:
        return cmp.VariantResult(vid, vid, error=error)
    arms = {"base": {"accuracy": 0.05, "exact_match": 0.0, "answer_f1": 0.1},
            "adapter": {"accuracy": score, "exact_match": score, "answer_f1": score, "contains_answer": score}}
    report = {"arms": arms, "main_arm": "adapter", "items": 60, "forgetting": {"forgetting": 0.02}}
    record = {"trainable_params": params, "total_params": 10**6, "trainable_pct": 100 * params / 10**6,
              "adapter_bytes": 4 * params, "train_seconds": seconds, "tokens_per_second": 90.0, "peak_rss_mb": 1500.0}
    gates = {"passed": passed, "results": [{"metric": "accuracy", "passed": passed}]}
    return cmp.VariantResult(vid, vid, f"t--{vid}@v1", report, record, gates, {"train": "ran", "eval": "ran"})


RESULTS = [
    result("full", 0.95, 1_000_000, 900.0),
    result("lora", 0.93, 8_000, 300.0),
    result("ia3", 0.85, 1_000, 250.0),
    result("prompt_tuning", 0.60, 500, 200.0, passed=False),
    result("qlora", 0.90, 8_000, 600.0),
    result("broken", 0, 0, 0, error="GenerationCheckError: adapter ignored"),
]


def test_report_marks_both_fronts_and_keeps_failed_variants():
    report = cmp.build_report("t", RESULTS, "best_score", {"accuracy": ">= 0.8"})
    rows = {r["variant"]: r for r in report["rows"]}
    assert report["score_metric"] == "accuracy" and report["base_scores"] == {"base": 0.05}
    assert {v for v, r in rows.items() if r["pareto_params"]} == {"full", "lora", "ia3", "prompt_tuning"}
    assert {v for v, r in rows.items() if r["pareto_time"]} == {"full", "lora", "ia3", "prompt_tuning"}
    assert not rows["qlora"]["pareto_params"]  # lora: better score, same params
    assert rows["broken"]["error"] and not rows["broken"]["pareto_params"]
    assert rows["lora"]["adapter_mb"] == round(32_000 / 2**20, 6) and rows["lora"]["forgetting"] == 0.02
    assert rows["prompt_tuning"]["gates"] == "FAIL: accuracy"


def test_best_score_picks_the_top_score_and_breaks_ties_by_size():
    sel = cmp.build_report("t", RESULTS, "best_score")["selection"]
    assert sel["chosen"] == "full" and "highest accuracy (0.950) of 5 variants; runner-up lora (0.930)" in sel["reason"]
    tied = [result("big", 0.9, 5000, 10.0), result("small", 0.9, 50, 99.0)]
    sel = cmp.build_report("t", tied, "best_score")["selection"]
    assert sel["chosen"] == "small" and "tie broken by fewer trainable parameters" in sel["reason"]


def test_smallest_passing_picks_the_fewest_params_that_pass_the_gates():
    sel = cmp.build_report("t", RESULTS, "smallest_passing", {"accuracy": ">= 0.8"})["selection"]
    assert sel["chosen"] == "ia3"  # prompt_tuning is smaller but fails the gate
    assert "fewest trainable parameters (1,000) of the 4 of 5 variants that pass the gates (accuracy >= 0.8)" in sel["reason"]
    failing = [result("a", 0.1, 10, 1.0, passed=False), result("b", 0.2, 20, 1.0, passed=False)]
    sel = cmp.build_report("t", failing, "smallest_passing", {"accuracy": ">= 0.8"})["selection"]
    assert sel["chosen"] is None and "none of 2 variants passed the gates" in sel["reason"]
    sel = cmp.build_report("t", [result("x", 0, 0, 0, error="boom")], "best_score")["selection"]
    assert sel["chosen"] is None and "every variant failed" in sel["reason"]


def test_selection_is_independent_of_variant_order():
    for rule in cmp.SELECT_RULES:
        chosen = {cmp.build_report("t", list(order), rule)["selection"]["chosen"]
                  for order in itertools.permutations(RESULTS[:5])}
        assert len(chosen) == 1, rule


def test_written_report_has_table_markdown_and_chart(tmp_path):
    report = cmp.build_report("t", RESULTS, "smallest_passing", {"accuracy": ">= 0.8"})
    paths = cmp.write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text()) == report
    md = paths["markdown"].read_text()
    assert "| variant | method | trainable params | trainable % | adapter MB | train s | tokens/s | peak RSS MB |" in md
    assert "| ia3 | ia3 | 1,000 | 0.1% | 0.00381 | 250 | 90 | 1,500 | 0.850 |" in md
    assert "**Selected: ia3** — smallest_passing" in md and "- broken: GenerationCheckError" in md
    assert "![accuracy against trainable parameters](chart.png)" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = cmp.table_rows(report)
    assert rows[1]["variant"] == "lora" and rows[1]["accuracy (adapter)"] == 0.93
    assert rows[-1] == {"variant": "broken", "method": "broken", "error": "GenerationCheckError: adapter ignored"}
