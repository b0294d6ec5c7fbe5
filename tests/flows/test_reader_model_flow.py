"""`knowledge.reader_model` through the real pipeline (issue 24): the real Gemma 3 270M writes the answers of a
tiny knowledge spec whose base is the tiny test model; built, evaluated, registered, reloaded and asked."""

from __future__ import annotations

import json

import pytest

from components.models.load import resolve_model
from components.registry import Registry
from components.spec import BUILTIN_GEMMA, BaseModelSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_gemma_reader_model_builds_evaluates_registers_reloads_and_answers_with_a_citation(
        prefect_api, isolated, make_workspace, tiny_llama_dir, tiny_embedder_dir, one_thread):
    from adaptflow.system import load_system
    from flows.pipeline import adapt

    make_workspace(goal="knowledge")  # data/docs (harbor, mill, choir) and data/qa.jsonl with doc_ids
    spec = isolated / "reads.yaml"
    spec.write_text(f"""name: gemma-reads
goal: knowledge
base_model: {{id: "{tiny_llama_dir}", allow_outside_workspace: true}}
knowledge:
  documents: data/docs/
  chunking: {{size: 32, overlap: 8}}
  embedder: "{tiny_embedder_dir}"
  allow_outside_workspace: true
  top_k: 2
  reader_model: {BUILTIN_GEMMA}
evaluation:
  data: data/qa.jsonl
  max_new_tokens: 6
""")
    ref = adapt(str(spec))
    version = Registry().open(ref)
    report = json.loads((version.path / "eval" / "report.json").read_text())
    assert report["reader_model"] == BUILTIN_GEMMA  # every arm was written by it
    assert {"base+retrieval", "gold-context"} <= set(report["arms"])
    assert not any(arm.startswith("reader") for arm in report["arms"])  # auto: no reader ships for Gemma
    assert "knowledge.reader_model gemma3-270m" in (version.path / "eval" / "report.md").read_text()
    gemma = resolve_model(BaseModelSpec(id=BUILTIN_GEMMA), verify=False)
    assert version.manifest["reader_model"]["weights_hash"] == gemma.weights_hash  # lineage: the model's digest
    assert version.manifest["base_model"]["weights_hash"] != gemma.weights_hash
    assert not (version.path / "adapter").exists()

    system = load_system(ref)
    assert system.handle.resolved.weights_hash == gemma.weights_hash  # the reloaded system answers with Gemma
    answer = system.query("When did the Pellin harbor open?", max_new_tokens=6)
    assert answer.answer and len(answer.citations) == 2 and answer.citations[0].doc_id
