"""Pipeline fixtures: a temporary Prefect API, an isolated registry and stage store, tiny workspaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TICKETS = [
    ("My card was charged twice this month.", "billing"),
    ("The app crashes when I open settings.", "bug"),
    ("I cannot log in to my account.", "account"),
    ("Where is my parcel? It is a week late.", "shipping"),
    ("Please refund the duplicate charge.", "billing"),
    ("Export to PDF shows a blank page.", "bug"),
    ("How do I change my email address?", "account"),
    ("The courier left my box at the wrong door.", "shipping"),
]


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_workspace(root: Path, model_dir: Path, embedder_dir: Path, goal: str = "both", gates: str = "{}",
                    max_steps: int = 4, checkpoint_every: int | None = None) -> Path:
    """A tiny `goal` spec with its data under root; returns the spec path. The tiny model and embedder
    are session folders outside the workspace, so the spec says so (`allow_outside_workspace`)."""
    data = root / "data"
    (data / "docs").mkdir(parents=True, exist_ok=True)
    system = {"role": "system", "content": "Label the ticket: billing, bug, account or shipping."}
    rows = [{"messages": [system, {"role": "user", "content": t}, {"role": "assistant", "content": a}]} for t, a in TICKETS]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    docs = {"harbor.md": "# Harbor\n\nThe Pellin harbor opened in 1871 and has nine piers.\n",
            "mill.md": "# Mill\n\nThe Copper mill ground wheat until 1952, when a flood broke its wheel.\n",
            "choir.md": "# Choir\n\nRuth Adeyemi founded the Saltmarsh choir in 1994.\n"}
    for name, text in docs.items():
        (data / "docs" / name).write_text(text)
    qa = [{"question": "When did the Pellin harbor open?", "answer": "1871", "doc_ids": ["harbor.md"]},
          {"question": "Who founded the Saltmarsh choir?", "answer": "Ruth Adeyemi", "doc_ids": ["choir.md"]},
          {"question": "What broke the mill's wheel?", "answer": "a flood", "doc_ids": ["mill.md"]}]
    (data / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    ckpt = f", checkpoint_every: {checkpoint_every}" if checkpoint_every else ""
    spec = f"""# run: adaptflow run spec.yaml
name: tiny-{goal}
goal: {goal}
base_model: {{id: "{model_dir}", allow_outside_workspace: true}}
behavior:
  data: {{train: data/train.jsonl, format: chat, eval_split: 0.25}}
  adapter: {{method: lora, r: 2, target_modules: [q_proj, v_proj]}}
  training: {{max_steps: {max_steps}, batch_size: 4, lr: 1.0e-2, max_seq_len: 128, seed: 0{ckpt}}}
knowledge:
  documents: data/docs/
  chunking: {{size: 32, overlap: 8}}
  embedder: "{embedder_dir}"
  allow_outside_workspace: true
  top_k: 2
evaluation:
  data: data/qa.jsonl
  gates: {gates}
  max_new_tokens: 4
"""
    path = root / "spec.yaml"
    path.write_text(spec)
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Registry and stage store under tmp_path; cwd is the workspace."""
    monkeypatch.setenv("ADAPTFLOW_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("ADAPTFLOW_STAGES", str(tmp_path / "stages"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def make_workspace(isolated, tiny_llama_dir, tiny_embedder_dir):
    """make_workspace(goal=..., gates=..., max_steps=...) -> spec path in the isolated workspace."""
    return lambda **kw: write_workspace(isolated, tiny_llama_dir, tiny_embedder_dir, **kw)


@pytest.fixture(scope="session")
def workspace_writer():
    """The write_workspace function itself, for tests that lay out their own folders."""
    return write_workspace


# --- serving: systems registered once per session by the real pipeline -------------------------

SERVED = {  # sub-workspace: (goal, registry name, training seed)
    "both": ("both", "tiny-both", 0),
    "behavior": ("behavior", "tiny-behavior", 1),
}


@pytest.fixture(scope="session")
def served_registry(prefect_api, tmp_path_factory, tiny_llama_dir, tiny_embedder_dir) -> Path:
    """A registry holding `tiny-both` (a LoRA adapter and a MiniLM index over the harbor/mill/choir
    documents, so the right document ranks first) and `tiny-behavior` (a LoRA adapter trained with
    another seed on the same tiny base), each registered by `adapt` and promoted to production.
    The two adapters answer differently from each other and from the base (checked in test_cmd_query)."""
    from flows.pipeline import adapt

    root = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTFLOW_REGISTRY", str(root / "registry"))
        mp.setenv("ADAPTFLOW_STAGES", str(root / "stages"))
        for sub, (goal, name, seed) in SERVED.items():
            # a gate that always passes: without gates only `latest` moves (components/evaluation/gates.py)
            spec = write_workspace(root / sub, tiny_llama_dir, tiny_embedder_dir, goal=goal,
                                   gates='{answer_f1: ">= 0.0"}')
            text = spec.read_text().replace(f"name: tiny-{goal}", f"name: {name}").replace("seed: 0", f"seed: {seed}")
            # lr 5e-2: four steps then move the tiny model's greedy answer off its untrained one ("")
            text = text.replace("lr: 1.0e-2", "lr: 5.0e-2")
            text = text.replace(f'embedder: "{tiny_embedder_dir}"', "embedder: all-minilm-l6-v2")
            spec.write_text(text)
            assert adapt(str(spec), str(root / sub)) == f"{name}@v1"
    return root / "registry"
