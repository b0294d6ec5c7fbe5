"""Load a knowledge corpus: a folder of .md / .txt / .jsonl files, or one .jsonl file.

Document ids are stable across runs and machines: the path relative to the documents
folder (posix separators) for .md/.txt, the row's own `id` for .jsonl. Each document
carries a content hash over its title, text and metadata, so an edit anywhere in a
document (metadata included) is seen by the incremental index update.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.spec import KnowledgeSpec, walk_confined

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}
CHUNKER_VERSION = "para-sent-v1"  # bump when chunk boundaries change, so corpus hashes change with them


class DocumentError(ValueError):
    """A document that cannot be loaded; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    content_hash: str
    source: str  # the file it came from, relative to the documents root
    metadata: dict[str, Any] = field(default_factory=dict)


def _content_hash(title: str, text: str, metadata: dict[str, Any]) -> str:
    payload = json.dumps({"title": title, "text": text, "metadata": metadata}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None


def _markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def _text_document(path: Path, root: Path) -> Document:
    text = _read_text(path)
    doc_id = path.relative_to(root).as_posix() if path != root else path.name
    title = (_markdown_title(text) if path.suffix in {".md", ".markdown"} else None) or path.stem
    return Document(doc_id, title, text, _content_hash(title, text, {}), doc_id, {})


def _jsonl_documents(path: Path, root: Path) -> list[Document]:
    source = path.relative_to(root).as_posix() if path != root else path.name
    docs: list[Document] = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{path} line {lineno}: not valid JSON ({exc.msg}); fix the line") from None
        if not isinstance(row, dict):
            raise DocumentError(f"{path} line {lineno}: expected an object {{\"id\", \"text\", ...}}; fix the line")
        for key in ("id", "text"):
            if key not in row:
                raise DocumentError(f"{path} line {lineno}: required field '{key}' is missing; add it")
        if not isinstance(row["text"], str):
            raise DocumentError(f"{path} line {lineno}: field 'text' must be a string; fix the value")
        doc_id = str(row["id"])
        title = str(row.get("title") or doc_id)
        metadata = {k: v for k, v in row.items() if k not in {"id", "text", "title"}}
        text = row["text"].replace("\r\n", "\n")
        docs.append(Document(doc_id, title, text, _content_hash(title, text, metadata), source, metadata))
    return docs


def _files(root: Path, confine: Path) -> list[Path]:
    if not root.exists() and not root.is_symlink():
        raise DocumentError(f"{root}: knowledge.documents does not exist; fix the path in the spec")
    files, escapes = walk_confined(root, confine)
    if escapes:
        link, target = escapes[0]
        raise DocumentError(
            f"{link} is a symlink to {target}, outside {confine}; refusing to index it (documents are served as "
            "citations): copy the file into the workspace or remove the link"
        )
    for path in files:
        if path.suffix.lower() not in SUFFIXES:
            raise DocumentError(
                f"{path}: unsupported document type '{path.suffix}'; knowledge.documents takes "
                f"{', '.join(sorted(SUFFIXES))}: convert the file or move it out of {root}"
            )
    return files


def load_documents(root: Path, confine_to: Path | None = None) -> list[Document]:
    """Every document under `root` (a folder, or a single file), sorted by id; ids must be unique.

    Symlinks are followed only when they resolve inside `confine_to` (default: `root` itself);
    one that leaves it is refused (`KnowledgeSpec.confine_root` passes the spec's workspace)."""
    root = Path(root)
    confine = Path(confine_to) if confine_to is not None else (root if root.is_dir() else root.parent)
    docs: list[Document] = []
    for path in _files(root, confine):
        if path.suffix.lower() == ".jsonl":
            docs.extend(_jsonl_documents(path, root if root.is_dir() else path))
        else:
            docs.append(_text_document(path, root if root.is_dir() else path))
    if not docs:
        raise DocumentError(f"{root}: no documents found; add .md, .txt or .jsonl files to knowledge.documents")
    seen: dict[str, str] = {}
    for doc in docs:
        if doc.doc_id in seen:
            raise DocumentError(
                f"{root}: document id '{doc.doc_id}' appears in both {seen[doc.doc_id]} and {doc.source}; "
                "ids must be unique: rename one"
            )
        seen[doc.doc_id] = doc.source
    return sorted(docs, key=lambda d: d.doc_id)


def corpus_hash_of(docs: list[Document], knowledge: KnowledgeSpec) -> str:
    """sha256 over document ids + content hashes + chunking + embedder name (+ chunker version)."""
    payload = {
        "documents": [[d.doc_id, d.content_hash] for d in docs],
        "chunking": {"size": knowledge.chunking.size, "overlap": knowledge.chunking.overlap, "chunker": CHUNKER_VERSION},
        "embedder": knowledge.embedder,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def corpus_hash(knowledge: KnowledgeSpec) -> str:
    """The corpus hash of a knowledge spec (reads and hashes its documents; embeds nothing)."""
    return corpus_hash_of(knowledge_documents(knowledge), knowledge)


def knowledge_documents(knowledge: KnowledgeSpec) -> list[Document]:
    """The spec's documents, with symlinks confined to the workspace the spec was loaded with."""
    return load_documents(knowledge.documents, confine_to=knowledge.confine_root)
