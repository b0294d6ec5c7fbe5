"""Split documents into chunks measured in embedder tokens, preferring paragraph and sentence ends.

A document is cut into units (sentences, or lines of lists and headings), each tagged with
whether it opens a paragraph. Units are packed greedily up to `size` tokens; a chunk that is
at least half full ends at the last paragraph boundary it contains rather than mid-paragraph.
The next chunk starts with as many trailing units of the previous one as fit in `overlap`
tokens. A unit longer than `size` (a very long sentence) is cut at token boundaries.

A converted document's locators (vectorstore.convert: page, slide, sheet or section starts) cut
it into parts that are packed apart, so no chunk crosses one; each chunk's metadata names its
part (`{"page": 2}`), which is what its citation shows. Documents without locators (.md, .txt,
.jsonl) are one part: their chunks are exactly what they were before locators existed.

Chunk ids are stable across runs: a 63-bit hash of (document id, position), so an index
update replaces exactly the chunks of the documents that changed.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.spec import ChunkingSpec
from vectorstore.documents import Document

# (start, end) character spans of a text's tokens, without special tokens
Tokenize = Callable[[str], list[tuple[int, int]]]

_PARAGRAPH = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    doc_id: str
    position: int
    title: str
    text: str
    start: int  # character span in the document's text
    end: int
    n_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def embed_text(self) -> str:
        """What the embedder sees: the text under its document title (a contextual header)."""
        return f"{self.title}\n{self.text}" if self.title and not self.text.startswith(f"# {self.title}") else self.text

    @property
    def embed_hash(self) -> str:
        """The embedding cache key: equal texts embed once, whatever document they are in."""
        return hashlib.sha256(self.embed_text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    opens_paragraph: bool


def chunk_id_for(doc_id: str, position: int) -> int:
    """A stable non-negative int64 id for the chunk at `position` in document `doc_id`."""
    digest = hashlib.sha256(f"{doc_id}\x00{position}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _raw_units(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, opens_paragraph) for each sentence or line; whitespace trimmed."""
    units: list[tuple[int, int, bool]] = []
    para_start = 0
    for match in [*_PARAGRAPH.finditer(text), None]:
        para_end = match.start() if match else len(text)
        first = True
        line_start = para_start
        for line in text[para_start:para_end].split("\n"):
            cut = line_start
            for sent in [*_SENTENCE_END.finditer(line), None]:
                sent_end = line_start + (sent.start() if sent else len(line))
                piece = text[cut:sent_end]
                lead = len(piece) - len(piece.lstrip())
                s, e = cut + lead, cut + len(piece.rstrip())
                if e > s:
                    units.append((s, e, first))
                    first = False
                cut = line_start + sent.end() if sent else sent_end
            line_start += len(line) + 1
        para_start = match.end() if match else len(text)
    return units


def _units(text: str, tokens: list[tuple[int, int]], size: int, piece: int) -> list[_Unit]:
    starts = [s for s, _ in tokens]
    out: list[_Unit] = []
    for s, e, opens in _raw_units(text):
        lo, hi = bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)
        n = hi - lo
        if n <= size:
            out.append(_Unit(s, e, max(n, 1 if e > s else 0), opens))
            continue
        for i, t in enumerate(range(lo, hi, piece)):  # a unit longer than a chunk: cut at token boundaries
            t_end = min(t + piece, hi)
            out.append(_Unit(tokens[t][0], tokens[t_end - 1][1], t_end - t, opens and i == 0))
    return out


def _pack(units: list[_Unit], size: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy packing into [i, j) unit ranges of at most `size` tokens with `overlap` carried over."""
    prefix = [0]
    for u in units:
        prefix.append(prefix[-1] + u.tokens)
    spans: list[tuple[int, int]] = []
    i, n = 0, len(units)
    while i < n:
        j = i + 1
        while j < n and prefix[j + 1] - prefix[i] <= size:
            j += 1
        if j < n:  # end at a paragraph boundary when the chunk would still be at least half full
            for jj in range(j, i, -1):
                if units[jj].opens_paragraph and prefix[jj] - prefix[i] >= size // 2:
                    j = jj
                    break
        spans.append((i, j))
        if j >= n:
            break
        k = j
        while k - 1 > i and prefix[j] - prefix[k - 1] <= overlap:
            k -= 1
        i = k
    return spans


def _parts(doc: Document) -> list[tuple[int, int, dict[str, Any]]]:
    """(start, end, chunk metadata) of the spans packed apart: the whole text, or one per locator."""
    if not doc.locators:
        return [(0, len(doc.text), dict(doc.metadata))]
    starts = [0] + [offset for offset, _, _ in doc.locators] + [len(doc.text)]
    labels = [{}] + [{kind: value} for _, kind, value in doc.locators]
    return [(s, e, {**doc.metadata, **label}) for s, e, label in zip(starts, starts[1:], labels, strict=False) if e > s]


def chunk_document(doc: Document, tokenize: Tokenize, chunking: ChunkingSpec) -> list[Chunk]:
    tokens = tokenize(doc.text)
    piece = chunking.overlap if chunking.overlap > 0 else chunking.size
    units = _units(doc.text, tokens, chunking.size, piece)
    unit_starts = [u.start for u in units]
    chunks: list[Chunk] = []
    for part_start, part_end, metadata in _parts(doc):
        part = units[bisect.bisect_left(unit_starts, part_start):bisect.bisect_left(unit_starts, part_end)]
        for i, j in _pack(part, chunking.size, chunking.overlap):
            start, end = part[i].start, part[j - 1].end
            n_tokens = sum(u.tokens for u in part[i:j])
            position = len(chunks)
            chunks.append(Chunk(
                chunk_id_for(doc.doc_id, position), doc.doc_id, position, doc.title,
                doc.text[start:end], start, end, n_tokens, dict(metadata),
            ))
    return chunks


def chunk_documents(docs: list[Document], tokenize: Tokenize, chunking: ChunkingSpec) -> list[Chunk]:
    """All chunks of all documents, in document order; raises if two chunk ids collide."""
    chunks = [c for doc in docs for c in chunk_document(doc, tokenize, chunking)]
    seen: dict[int, Chunk] = {}
    for c in chunks:
        if c.chunk_id in seen:
            other = seen[c.chunk_id]
            raise ValueError(
                f"chunk id collision between {other.doc_id}#{other.position} and {c.doc_id}#{c.position} "
                "(a 1 in 2^63 event); rename one of the two documents"
            )
        seen[c.chunk_id] = c
    return chunks


def whitespace_tokenize(text: str) -> list[tuple[int, int]]:
    """Spans of whitespace-separated words: a stand-in tokenizer for tests and previews."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
