"""`goal: auto` measured: the decision rule on the three examples' measured numbers, and the real probe in the
main flow on tiny models (evidence in the manifest, the route derived from it, the probe cached like a stage)."""

from __future__ import annotations

import json

import pytest

from components.registry import Registry
from components.routing.probe import Evidence, decide, sample
from components.spec import TaskSpec

pytestmark = pytest.mark.integration


def spec_with(behavior: bool, knowledge: bool) -> TaskSpec:
    data: dict = {"name": "t", "goal": "auto", "evaluation": {"data": "qa.jsonl"}}
    if behavior:
        data["behavior"] = {"data": {"train": "train.jsonl"}}
    if knowledge:
        data["knowledge"] = {"documents": "docs/"}
    return TaskSpec.model_validate(data, context={"check_exists": False})


# The built-in model's measured numbers from the README's example runs (base arms of the 2x2 evaluations).
TRIAGE = Evidence(16, "accuracy", {"base": {"accuracy": 0.0, "contains_answer": 0.06}})
LORE = {"base": {"exact_match": 0.0, "contains_answer": 0.0},
        "base+retrieval": {"exact_match": 0.0, "contains_answer": 0.727},
        "base+gold": {"exact_match": 0.0, "contains_answer": 0.81}}


@pytest.mark.parametrize(("behavior", "knowledge", "evidence", "label"), [
    (True, False, TRIAGE, "behavior"),  # support-triage: no format without an adapter
    (False, True, Evidence(16, "exact_match", LORE), "knowledge"),  # lore-knowledge: documents supply the facts
    (True, True, Evidence(16, "exact_match", LORE), "both"),  # lore-assistant: facts from retrieval, format from the adapter
])
def test_the_three_examples_route_from_their_numbers(behavior, knowledge, evidence, label):
    decision = decide(spec_with(behavior, knowledge), evidence)
    assert decision.label == label
    assert decision.reasons[0].startswith("probe: base model on 16 evaluation items")


def test_a_base_that_already_answers_needs_neither():
    good = Evidence(16, "exact_match", {"base": {"exact_match": 0.9, "contains_answer": 0.95},
                                        "base+retrieval": {"exact_match": 0.9, "contains_answer": 1.0}})
    decision = decide(spec_with(True, True), good)
    assert decision.label == "neither"
    assert "index not needed: the documents raise contains-answer by +0.05" in decision.reasons[1]
    assert "adapter not needed" in decision.reasons[2]


def test_sample_is_even_and_deterministic():
    assert sample(list(range(40)), 4) == [0, 10, 20, 30] and sample([1, 2], 16) == [1, 2]


def test_auto_spec_probes_the_base_records_the_evidence_and_caches_the_probe(prefect_api, isolated, make_workspace):
    from flows.pipeline import adapt

    spec_path = make_workspace(goal="auto")
    ref = adapt(str(spec_path))
    version = Registry().open(ref)
    evidence = version.manifest["route_probe"]
    assert set(evidence["arms"]) == {"base", "base+retrieval", "base+gold"} and evidence["items"] == 3
    spec = TaskSpec.model_validate(version.manifest["spec"], context={"check_exists": False})
    expected = decide(spec, Evidence(evidence["items"], evidence["strict_metric"], evidence["arms"]))
    assert version.manifest["route"] == {"decision": expected.label, "reasons": expected.reasons}
    from prefect.artifacts import Artifact

    summary = Artifact.get(f"run-{spec.name}").data  # the UI's run summary shows the same numbers
    assert "| probe arm | " in summary
    for arm, numbers in evidence["arms"].items():
        assert f"| {arm} | {numbers[evidence['strict_metric']]:.3f} | {numbers['contains_answer']:.3f} |" in summary
    probes = list((isolated / "stages" / "probe").glob("*/probe.json"))
    assert len(probes) == 1 and json.loads(probes[0].read_text()) == evidence
    # the probe is one of the version's stages: its key is recorded, and a second run is found up to date
    from flows import keys

    assert version.manifest["stage_keys"]["probe"] == probes[0].parent.name == keys.stage_keys(spec)["probe"]
    assert keys.up_to_date(spec, Registry()).ref == version.ref
    stamp = probes[0].stat().st_mtime_ns

    assert adapt(str(spec_path)) == ref  # unchanged: the probe is reused, nothing new registered
    assert probes[0].stat().st_mtime_ns == stamp
