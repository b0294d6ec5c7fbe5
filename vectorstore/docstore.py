"""The docstore: chunk text and metadata outside FAISS, one JSON object per line (docs/docstore.md).

Rows are sorted by `id` (the int64 FAISS id), so a docstore written by an incremental update
is byte-for-byte the one a full rebuild writes. Readable with nothing but `json`:

    rows = {r["id"]: r for r in map(json.loads, open("docstore.jsonl"))}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vectorstore.chunking import Chunk

DOCSTORE_FILE = "docstore.jsonl"
ROW_FIELDS = ("id", "doc_id", "position", "title", "text", "start", "end", "n_tokens", "embed_hash", "metadata")


class DocstoreError(ValueError):
    pass


def chunk_row(chunk: Chunk) -> dict[str, Any]:
    return {
        "id": chunk.chunk_id, "doc_id": chunk.doc_id, "position": chunk.position, "title": chunk.title,
        "text": chunk.text, "start": chunk.start, "end": chunk.end, "n_tokens": chunk.n_tokens,
        "embed_hash": chunk.embed_hash, "metadata": chunk.metadata,
    }


def row_chunk(row: dict[str, Any]) -> Chunk:
    return Chunk(row["id"], row["doc_id"], row["position"], row["title"], row["text"], row["start"], row["end"],
                 row["n_tokens"], row.get("metadata") or {})


def write_docstore(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON line per chunk, by id (fsynced with the rest of the index folder: vectorstore.persist)."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in sorted(rows, key=lambda r: r["id"]):
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def read_docstore(path: Path) -> dict[int, dict[str, Any]]:
    """id -> row; every line must parse and carry the documented fields, ids unique."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise DocstoreError(f"{path}: cannot read the docstore ({exc.strerror}); rebuild the index") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocstoreError(f"{path} line {lineno}: not valid JSON ({exc.msg}); the file is damaged, rebuild the index") from None
            missing = [f for f in ROW_FIELDS if f not in row]
            if missing:
                raise DocstoreError(f"{path} line {lineno}: missing field(s) {', '.join(missing)}; rebuild the index")
            if row["id"] in rows:
                raise DocstoreError(f"{path} line {lineno}: id {row['id']} appears twice; rebuild the index")
            rows[row["id"]] = row
    return rows
