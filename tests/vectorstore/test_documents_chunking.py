"""Loading and chunking: stable ids, spans that match the text, token budgets, paragraph preference."""

from __future__ import annotations

import json

import pytest

from components.spec import ChunkingSpec, KnowledgeSpec
from vectorstore.chunking import chunk_document, chunk_documents, chunk_id_for, whitespace_tokenize
from vectorstore.documents import Document, DocumentError, corpus_hash, load_documents


def _doc(text: str, doc_id: str = "a.md") -> Document:
    return Document(doc_id, "A", text, "h", doc_id, {})


def test_load_folder_ids_titles_hashes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("intro\n# Alpha Title\n\nBody.", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("Plain text.", encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"id": "r1", "text": "Row one.", "title": "Row", "lang": "en"}) + "\n\n"
        + json.dumps({"id": 7, "text": "Row two."}) + "\n", encoding="utf-8")
    (tmp_path / ".hidden.md").write_text("ignored", encoding="utf-8")
    docs = {d.doc_id: d for d in load_documents(tmp_path)}
    assert sorted(docs) == ["7", "a.md", "r1", "sub/b.txt"]
    assert docs["a.md"].title == "Alpha Title" and docs["sub/b.txt"].title == "b"
    assert docs["r1"].title == "Row" and docs["r1"].metadata == {"lang": "en"}
    again = {d.doc_id: d.content_hash for d in load_documents(tmp_path)}
    assert again == {k: d.content_hash for k, d in docs.items()}


def test_content_hash_sees_text_and_metadata(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "x", "text": "t", "tag": 1}) + "\n")
    first = load_documents(rows)[0].content_hash
    rows.write_text(json.dumps({"id": "x", "text": "t", "tag": 2}) + "\n")
    assert load_documents(rows)[0].content_hash != first


@pytest.mark.parametrize("content, fragment", [
    ('{"id": "x"}\n', "line 1: required field 'text' is missing"),
    ('{"id": "x", "text": "a"}\nnot json\n', "line 2: not valid JSON"),
    ('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n', "document id 'x' appears in both"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, fragment):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DocumentError, match=fragment) as err:
        load_documents(tmp_path)
    assert "d.jsonl" in str(err.value)


def test_unsupported_file_and_empty_folder(tmp_path):
    with pytest.raises(DocumentError, match="no documents found"):
        load_documents(tmp_path)
    (tmp_path / "x.rtf").write_bytes(b"{\\rtf1 text}")
    with pytest.raises(DocumentError, match=r"x\.rtf: unsupported document type '.rtf'; knowledge.documents takes "
                                            r"\.csv, \.docx, \.epub, \.htm, \.html, \.jsonl, \.markdown, \.md, \.pdf"):
        load_documents(tmp_path)


def test_corpus_hash_tracks_documents_chunking_embedder(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\nOne.")
    spec = KnowledgeSpec(documents=tmp_path)
    h = corpus_hash(spec)
    assert h == corpus_hash(spec)
    assert corpus_hash(spec.model_copy(update={"chunking": ChunkingSpec(size=100, overlap=10)})) != h
    assert corpus_hash(spec.model_copy(update={"embedder": "other"})) != h
    (tmp_path / "a.md").write_text("# A\n\nTwo.")
    assert corpus_hash(spec) != h


def _long_text() -> str:
    paras = [" ".join(f"Sentence {p}.{s} has five words." for s in range(6)) for p in range(8)]
    return "# Title\n\n" + "\n\n".join(paras)


def test_chunks_respect_budget_overlap_and_spans():
    doc = _doc(_long_text())
    chunks = chunk_document(doc, whitespace_tokenize, ChunkingSpec(size=40, overlap=10))
    assert len(chunks) > 3
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text
        assert len(whitespace_tokenize(c.text)) == c.n_tokens <= 40
        assert c.chunk_id == chunk_id_for("a.md", c.position)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end, "consecutive chunks overlap"
        assert len(whitespace_tokenize(doc.text[b.start:a.end])) <= 10
        assert a.text.rstrip().endswith(".")  # cut at a sentence end, never mid-sentence
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(doc.text) if not ch.isspace())


def test_prefers_paragraph_boundaries():
    # paragraphs of 30 words: a 40-token chunk holds one paragraph, never the start of the next
    text = "\n\n".join(" ".join(f"P{p}w{w}." if w % 10 == 9 else f"P{p}w{w}" for w in range(30)) for p in range(4))
    chunks = chunk_document(_doc(text), whitespace_tokenize, ChunkingSpec(size=40, overlap=0))
    assert [c.text.split()[0] for c in chunks] == ["P0w0", "P1w0", "P2w0", "P3w0"]


def test_long_sentence_is_cut_at_token_boundaries():
    text = " ".join(f"w{i}" for i in range(100))  # one 100-token sentence
    chunks = chunk_document(_doc(text), whitespace_tokenize, ChunkingSpec(size=30, overlap=10))
    assert all(c.n_tokens <= 30 for c in chunks)
    assert chunks[0].text.startswith("w0 ") and chunks[-1].text.endswith("w99")


def test_ids_stable_and_unique_across_documents():
    docs = [_doc(_long_text(), "a.md"), _doc(_long_text(), "b.md")]
    first = chunk_documents(docs, whitespace_tokenize, ChunkingSpec(size=40, overlap=10))
    second = chunk_documents(docs, whitespace_tokenize, ChunkingSpec(size=40, overlap=10))
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    assert len({c.chunk_id for c in first}) == len(first)
    assert all(0 <= c.chunk_id < 2**63 for c in first)
