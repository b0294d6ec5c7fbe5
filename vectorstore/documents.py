"""Load a knowledge corpus: a folder of .md / .txt / .jsonl files and converted formats, or one file.

Document ids are stable across runs and machines: the path relative to the documents
folder (posix separators) for files, the row's own `id` for .jsonl. Each document
carries a content hash over its title, text and metadata, so an edit anywhere in a
document (metadata included) is seen by the incremental index update.

PDF, HTML, DOCX, PPTX, XLSX, CSV and EPUB files are converted to text by vectorstore.convert
(cached by content); their documents also carry locators (page, slide, sheet or section starts),
which join their content hash and become the chunks' citation metadata. A .md/.txt file that is
not UTF-8 is decoded with the encoding charset-normalizer detects, or refused with the byte offset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import charset_normalizer

from components.spec import KnowledgeSpec, walk_confined
from vectorstore.convert import CONVERTED_SUFFIXES, ConversionError, ConversionStats, Locator, convert_file

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl"} | CONVERTED_SUFFIXES
MAX_CHAOS = 0.2  # charset-normalizer's "mess" ratio above which a guessed encoding is not trusted
log = logging.getLogger(__name__)
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
    locators: tuple[Locator, ...] = ()  # converted files: where each page/slide/sheet/section starts in `text`


def _content_hash(title: str, text: str, metadata: dict[str, Any], locators: tuple[Locator, ...] = ()) -> str:
    body: dict[str, Any] = {"title": title, "text": text, "metadata": metadata}
    if locators:  # only converted files have them: the hashes of .md/.txt/.jsonl documents stay what they were
        body["locators"] = [list(loc) for loc in locators]
    payload = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_text(path: Path, detect: bool = False) -> str:
    """UTF-8 text; with `detect`, other encodings too when charset-normalizer is confident of one."""
    data = path.read_bytes()
    try:
        return _newlines(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        start = exc.start
    guess = charset_normalizer.from_bytes(data).best() if detect else None
    if guess is None or guess.chaos > MAX_CHAOS:
        detected = " and its encoding could not be recognized" if detect else ""
        raise DocumentError(f"{path}: not valid UTF-8 (byte {start}){detected}; re-save the file as UTF-8") from None
    log.info("%s: not UTF-8 (byte %d); read as %s", path, start, guess.encoding)
    return _newlines(str(guess))


def _newlines(text: str) -> str:
    """What text-mode reading (universal newlines) gives, which is how these files were always read."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def _text_document(path: Path, root: Path) -> Document:
    text = _read_text(path, detect=True)
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


def _converted_document(path: Path, root: Path, cache_dir: Path | None, stats: ConversionStats) -> Document:
    try:
        converted = convert_file(path, cache_dir, stats)
    except ConversionError as exc:
        raise DocumentError(str(exc)) from None
    doc_id = path.relative_to(root).as_posix() if path != root else path.name
    title = converted.title or _markdown_title(converted.text) or path.stem
    text, locators = converted.text, converted.locators
    return Document(doc_id, title, text, _content_hash(title, text, {}, locators), doc_id, {}, locators)


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
    # the lock file Office keeps beside an open document (~$report.docx) is no document
    files = [p for p in files if not (p.name.startswith("~$") and p.suffix.lower() in CONVERTED_SUFFIXES)]
    for path in files:
        if path.suffix.lower() not in SUFFIXES:
            raise DocumentError(
                f"{path}: unsupported document type '{path.suffix}'; knowledge.documents takes "
                f"{', '.join(sorted(SUFFIXES))}: convert the file or move it out of {root}"
            )
    return files


def load_documents(root: Path, confine_to: Path | None = None, *, cache_dir: Path | None = None,
                   stats: ConversionStats | None = None) -> list[Document]:
    """Every document under `root` (a folder, or a single file), sorted by id; ids must be unique.

    Symlinks are followed only when they resolve inside `confine_to` (default: `root` itself);
    one that leaves it is refused (`KnowledgeSpec.confine_root` passes the spec's workspace).
    Converted formats are cached in `cache_dir` (default `$ADAPTFLOW_HOME/conversions`); `stats`
    counts the files converted and those taken from the cache."""
    root = Path(root)
    confine = Path(confine_to) if confine_to is not None else (root if root.is_dir() else root.parent)
    stats = stats if stats is not None else ConversionStats()
    docs: list[Document] = []
    for path in _files(root, confine):
        base = root if root.is_dir() else path
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            docs.extend(_jsonl_documents(path, base))
        elif suffix in CONVERTED_SUFFIXES:
            docs.append(_converted_document(path, base, cache_dir, stats))
        else:
            docs.append(_text_document(path, base))
    if stats.converted or stats.cached:
        log.info("%s: documents %s", root, stats)
    if not docs:
        raise DocumentError(f"{root}: no documents found; add .md, .txt or .jsonl files (or PDF, HTML, DOCX, PPTX, "
                            "XLSX, CSV, EPUB) to knowledge.documents")
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


def knowledge_documents(knowledge: KnowledgeSpec, stats: ConversionStats | None = None) -> list[Document]:
    """The spec's documents, with symlinks confined to the workspace the spec was loaded with."""
    return load_documents(knowledge.documents, confine_to=knowledge.confine_root, stats=stats)
