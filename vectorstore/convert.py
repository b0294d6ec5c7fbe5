"""Turn PDF, HTML, DOCX, PPTX, XLSX, CSV and EPUB files into text with locators, cached by content.

PDFs are read page by page with pdfminer.six (markitdown's PDF converter uses the same extractor
but joins the pages, so a citation could not name one); every other format goes through the
markitdown converter for its suffix, called directly: the suffix decides, no content sniffing.
The text is markdown-like (headings as `#`, tables as pipes). Locators mark where a page, slide,
sheet or section heading starts in it: (character offset, kind, value). The chunker never lets
a chunk cross one, so each chunk, and the citation made from it, names exactly one.

A conversion is cached under `$ADAPTFLOW_HOME/conversions/`, keyed by the sha256 of the file's
bytes, the converter and its version and CONVERT_VERSION, and written atomically: an unchanged
file is converted once, whatever its name or folder. `ConversionStats` counts both outcomes.
docs/documents.md is the user's page.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.store.fileio import adaptflow_home, atomic_write_json

CONVERT_VERSION = 1  # bump when the post-processing below changes, so cached conversions are redone
PDF_SUFFIXES = frozenset({".pdf"})
MARKITDOWN_CONVERTERS = {
    ".html": "HtmlConverter", ".htm": "HtmlConverter", ".docx": "DocxConverter", ".pptx": "PptxConverter",
    ".xlsx": "XlsxConverter", ".csv": "CsvConverter", ".epub": "EpubConverter",
}
CONVERTED_SUFFIXES = PDF_SUFFIXES | frozenset(MARKITDOWN_CONVERTERS)
LOCATOR_KINDS = ("page", "slide", "sheet", "section")

Locator = tuple[int, str, int | str]  # (offset in the text, one of LOCATOR_KINDS, page/slide number or name)

_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_SLIDE = re.compile(r"^<!-- Slide number: (\d+) -->[ \t]*$", re.MULTILINE)  # markitdown's pptx slide marker
_ERROR_CHARS = 200  # of a library's own message, kept on the one error line


class ConversionError(ValueError):
    """A file that cannot be converted; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Converted:
    text: str
    locators: tuple[Locator, ...]
    title: str | None = None  # the format's own title (HTML <title>, EPUB metadata), if any


@dataclass
class ConversionStats:
    converted: int = 0
    cached: int = 0

    def __str__(self) -> str:
        return f"converted {self.converted}, cached {self.cached}"


def conversion_cache_dir() -> Path:
    return adaptflow_home() / "conversions"


def converter_id(suffix: str) -> str:
    """What made the text, versions included: part of the cache key, so an upgrade converts again."""
    if suffix in PDF_SUFFIXES:
        return f"pdfminer.six {importlib.metadata.version('pdfminer.six')}"
    return f"markitdown {importlib.metadata.version('markitdown')} {MARKITDOWN_CONVERTERS[suffix]}"


def convert_file(path: Path, cache_dir: Path | None = None, stats: ConversionStats | None = None) -> Converted:
    """The text and locators of a PDF/HTML/DOCX/PPTX/XLSX/CSV/EPUB file, from the cache when its bytes are known."""
    path = Path(path)
    suffix = path.suffix.lower()
    data = path.read_bytes()
    converter = converter_id(suffix)
    key = hashlib.sha256(json.dumps([hashlib.sha256(data).hexdigest(), converter, CONVERT_VERSION]).encode()).hexdigest()
    cache_file = Path(cache_dir if cache_dir is not None else conversion_cache_dir()) / f"{key}.json"
    stats = stats if stats is not None else ConversionStats()
    found = _read_cached(cache_file, key)
    if found is not None:
        stats.cached += 1
        return found
    result = _pdf(path, data) if suffix in PDF_SUFFIXES else _markitdown(path, data, suffix)
    if not result.text.strip():
        raise ConversionError(f"{path}: no text found in it; add text to the file or move it out of the documents folder")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache_file, {"key": key, "converter": converter, "title": result.title, "text": result.text,
                                   "locators": [list(loc) for loc in result.locators]}, ensure_ascii=False)
    stats.converted += 1
    return result


def _read_cached(cache_file: Path, key: str) -> Converted | None:
    try:
        entry = json.loads(cache_file.read_text(encoding="utf-8"))
        if entry["key"] != key:
            return None
        return Converted(entry["text"], tuple((int(o), str(k), v) for o, k, v in entry["locators"]), entry["title"])
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: convert again and overwrite it
        return None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:_ERROR_CHARS]}".rstrip(": ")


def _pdf(path: Path, data: bytes) -> Converted:
    # imported here: corpora without PDFs should not pay for it (0.17 s measured)
    from pdfminer.high_level import extract_text
    from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect
    from pdfminer.pdfpage import PDFTextExtractionNotAllowed

    try:
        raw = extract_text(io.BytesIO(data))
    except (PDFPasswordIncorrect, PDFEncryptionError, PDFTextExtractionNotAllowed) as exc:
        raise ConversionError(
            f"{path}: the PDF is encrypted ({_one_line(exc)}); save an unencrypted copy "
            "(e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`) and index that instead"
        ) from None
    except Exception as exc:  # noqa: BLE001 - pdfminer raises a dozen kinds of error on a damaged file
        raise ConversionError(
            f"{path}: cannot be read as a PDF ({_one_line(exc)}); the file is damaged or not a PDF: "
            "export it again from its source, or repair it (e.g. `qpdf in.pdf repaired.pdf`)"
        ) from None
    pages = raw.split("\f")[:-1] if raw.endswith("\f") else raw.split("\f")  # pdfminer ends every page with \f
    if not pages or not any(p.strip() for p in pages):
        raise ConversionError(
            f"{path}: no text layer ({len(pages)} page(s), no extractable text: a scan or images only); "
            "run OCR first (e.g. `ocrmypdf in.pdf out.pdf`) and index the OCR'd copy"
        )
    return _joined([("page", n, text) for n, text in enumerate(pages, start=1)])


def _joined(parts: list[tuple[str, int | str, str]]) -> Converted:
    """Non-empty parts joined as paragraphs, each marked by a locator at its first character."""
    text, locators = "", []
    for kind, value, body in parts:
        body = body.strip()
        if body:
            text += "\n\n" if text else ""
            locators.append((len(text), kind, value))
            text += body
    return Converted(text, tuple(locators))


def _markitdown(path: Path, data: bytes, suffix: str) -> Converted:
    # imported here: markitdown pulls in pandas and magika (1.6 s measured), which markdown corpora never need
    from markitdown import StreamInfo, converters

    converter = getattr(converters, MARKITDOWN_CONVERTERS[suffix])()
    try:
        result = converter.convert(io.BytesIO(data), StreamInfo(extension=suffix, filename=path.name))
    except Exception as exc:  # noqa: BLE001 - zipfile, lxml, pandas and mammoth each raise their own
        raise ConversionError(
            f"{path}: cannot be converted ({_one_line(exc)}); the file is damaged, password-protected or not a "
            f"real {suffix} file: save it again from the application that made it, without a password"
        ) from None
    text = result.markdown.replace("\r\n", "\n").strip()
    title = (result.title or "").strip() or None
    if suffix == ".pptx":
        return _slides(text, title)
    return Converted(text, _headings(text, "sheet" if suffix == ".xlsx" else "section"), title)


def _headings(text: str, kind: str) -> tuple[Locator, ...]:
    return tuple((m.start(), kind, m.group(1).strip()) for m in _HEADING.finditer(text))


def _slides(text: str, title: str | None) -> Converted:
    pieces = _SLIDE.split(text)  # [before, number, body, number, body, ...]
    joined = _joined([("slide", int(n), body) for n, body in zip(pieces[1::2], pieces[2::2], strict=True)])
    return Converted(joined.text, joined.locators, title)


def locator_label(metadata: dict[str, Any]) -> str:
    """Where in its file a chunk sits, for a citation: 'page 2', 'slide 3', 'sheet "Prices"', 'section "Setup"'."""
    for kind in LOCATOR_KINDS:
        value = metadata.get(kind)
        if value is not None and value != "":
            return f"{kind} {value}" if kind in ("page", "slide") else f'{kind} "{value}"'
    return ""


__all__ = ["CONVERTED_SUFFIXES", "ConversionError", "ConversionStats", "Converted", "Locator", "conversion_cache_dir",
           "convert_file", "converter_id", "locator_label"]
