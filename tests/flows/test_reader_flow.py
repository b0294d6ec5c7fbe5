"""The reading adapter through the real pipeline: trained once per base, reused by every knowledge spec."""

from __future__ import annotations

import json

import pytest

from components.registry import Registry

pytestmark = pytest.mark.integration


def knowledge_spec(root, name: str, model_dir, embedder_dir, reader: str = "builtin"):
    """A knowledge-only spec over the tiny workspace's documents, without tuned settings left to measure."""
    path = root / f"{name}.yaml"
    path.write_text(f"""name: {name}
goal: knowledge
base_model: {{id: "{model_dir}", allow_outside_workspace: true}}
knowledge:
  documents: data/docs/
  chunking: {{size: 32, overlap: 8}}
  embedder: "{embedder_dir}"
  allow_outside_workspace: true
  top_k: 2
  reader: {reader}
evaluation:
  data: data/qa.jsonl
  max_new_tokens: 4
""")
    return path


def test_builtin_reader_trains_once_and_a_second_spec_trains_nothing(prefect_api, isolated, make_workspace,
                                                                     tiny_llama_dir, tiny_embedder_dir):
    from adaptflow.system import load_system
    from flows.pipeline import adapt

    make_workspace(goal="knowledge")  # lays out data/docs and data/qa.jsonl
    first = knowledge_spec(isolated, "reads-a", tiny_llama_dir, tiny_embedder_dir)
    ref = adapt(str(first))
    [reader_key] = [p.parent.name for p in (isolated / "stages" / "reader").glob("*/stage.json")]
    stamp = (isolated / "stages" / "reader" / reader_key / "stage.json").stat().st_mtime_ns
    version = Registry().open(ref)
    report = json.loads((version.path / "eval" / "report.json").read_text())
    assert list(report["arms"]) == ["base", "base+retrieval", "reader+retrieval", "gold-context", "reader+gold-context"]
    assert report["main_arm"] == "reader+retrieval"  # `builtin` is explicit: the reader ships
    assert set(report["ceiling"]["arms"]) == {"base+retrieval", "reader+retrieval"}
    assert version.manifest["stage_keys"]["reader"] == reader_key
    assert json.loads((version.path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    system = load_system(ref)
    assert system.method == "lora" and system.query("When did the Pellin harbor open?").citations

    second = knowledge_spec(isolated, "reads-b", tiny_llama_dir, tiny_embedder_dir)
    adapt(str(second))
    assert [p.parent.name for p in (isolated / "stages" / "reader").glob("*/stage.json")] == [reader_key]
    assert (isolated / "stages" / "reader" / reader_key / "stage.json").stat().st_mtime_ns == stamp  # trained nothing

    third = knowledge_spec(isolated, "reads-c", tiny_llama_dir, tiny_embedder_dir, reader=ref)  # NAME@REF
    report = json.loads((Registry().open(adapt(str(third))).path / "eval" / "report.json").read_text())
    assert "reader+retrieval" in report["arms"]


def test_no_reader_and_auto_on_another_base_train_nothing(prefect_api, isolated, make_workspace, tiny_llama_dir,
                                                           tiny_embedder_dir):
    from flows.pipeline import adapt

    make_workspace(goal="knowledge")
    for name, reader in (("reads-none", "none"), ("reads-auto", "auto")):  # auto: builtin only on the built-in base
        report = json.loads((Registry().open(adapt(str(knowledge_spec(
            isolated, name, tiny_llama_dir, tiny_embedder_dir, reader)))).path / "eval" / "report.json").read_text())
        assert list(report["arms"]) == ["base", "base+retrieval", "gold-context"]
    assert not (isolated / "stages" / "reader").exists()
