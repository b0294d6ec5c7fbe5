"""`adaptflow index SPEC` end to end: a tiny embedder for speed, the built-in MiniLM on the lore set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


def _invoke(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def _write_spec(tmp_path: Path, embedder: str, corpus: Path) -> Path:
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"the {t} {d}", "answer": "x", "doc_ids": [f"{t}-{d}.md"]}) + "\n"
                          for d, t in enumerate(["harbor", "lighthouse", "orchard"])))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: tiny-knowledge\ngoal: knowledge\n"
        f"knowledge:\n  documents: {corpus.name}/\n  chunking: {{size: 48, overlap: 8}}\n  embedder: {embedder}\n"
        "  hybrid: true\n  top_k: 3\n  allow_outside_workspace: true\n"  # the session's tiny embedder lives outside
        "evaluation:\n  data: qa.jsonl\n")
    return spec


def test_index_command_builds_updates_and_reports(tmp_path, tiny_embedder, make_corpus, monkeypatch):
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "home"))
    spec = _write_spec(tmp_path, str(tiny_embedder.name), make_corpus(tmp_path / "docs", n_docs=5))
    first = _invoke("index", str(spec), "--workspace", str(tmp_path), "--compare")
    assert first.exit_code == 0, first.output
    out = first.output
    assert re.search(r"built .*indexes/tiny-knowledge in \d+\.\d s \(\+ \d+\.\d s loading the embedder; full build", out)
    assert re.search(r"documents 5, chunks \d+, vectors \d+", out)
    assert "recall vs exact: 1.000 (exact search)" in out
    assert re.search(r"hybrid \*\s+hit@3 \d\.\d{3}\s+recall@3 \d\.\d{3}\s+MRR \d\.\d{3}", out)
    assert "dense+mmr" in out
    (tmp_path / "docs" / "harbor-0.md").unlink()
    second = _invoke("index", str(spec), "--workspace", str(tmp_path), "--json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert report["index"]["update"]["mode"] == "incremental" and report["index"]["update"]["documents_removed"] == 1
    assert report["retrieval"]["variants"]["hybrid"]["queries"] == 3


def test_index_command_errors_name_the_spec(tmp_path, tiny_embedder, make_corpus, monkeypatch):
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "home"))
    spec = _write_spec(tmp_path, str(tiny_embedder.name), make_corpus(tmp_path / "docs", n_docs=2))
    spec.write_text(spec.read_text().replace("size: 48", "size: 300"))
    result = _invoke("index", str(spec), "--workspace", str(tmp_path))
    assert result.exit_code == 1
    assert "knowledge.chunking.size is 300 tokens" in result.output


@pytest.mark.slow
def test_lore_set_with_builtin_minilm(tmp_path, monkeypatch):
    """The shipped example: the real MiniLM must retrieve a gold document in the top 4 for >= 90% of questions."""
    from components.spec.load import load_spec
    from vectorstore import Retriever, build_index, evaluate_retrieval, load_embedder, read_eval_rows

    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "home"))
    spec_file = REPO / "specs" / "lore-knowledge.yaml"
    spec = load_spec(spec_file, workspace=REPO)
    info = build_index(spec.knowledge, tmp_path / "idx", cache_dir=tmp_path / "home" / "embeddings")
    embedder = load_embedder("all-minilm-l6-v2")
    assert embedder.dim == 384 and info["embedder"]["weights_hash"] == embedder.weights_hash
    assert info["counts"]["documents"] >= 12 and info["index"]["factory"] == "IDMap2,Flat"
    metrics = evaluate_retrieval(Retriever.open(tmp_path / "idx"), read_eval_rows(spec.evaluation.data), 4)
    assert metrics["queries"] >= 40 and metrics["hit_at_k"] >= 0.9, metrics

    result = _invoke("index", str(spec_file), "--workspace", str(REPO), "--out", str(tmp_path / "cli"))
    assert result.exit_code == 0, result.output
    assert "(embedded 0, from cache" in result.output  # every chunk came from the embedding cache
    hit = float(re.search(r"hit@\d+ (\d\.\d{3})", result.output).group(1))
    assert hit >= 0.9, result.output
