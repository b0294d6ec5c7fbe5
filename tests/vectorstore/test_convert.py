"""Converted formats: real PDF/DOCX/PPTX/XLSX/CSV/HTML/EPUB files made here, indexed through build_index,
cited by page / slide / sheet / section; the content-keyed conversion cache; one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import docx
import openpyxl
import pytest
from ebooklib import epub
from fpdf import FPDF
from fpdf.enums import EncryptionMethod
from pptx import Presentation

from components.spec import KnowledgeSpec
from vectorstore import INFO_FILE, ConversionStats, Retriever, build_index, load_documents, load_embedder
from vectorstore.documents import DocumentError

PAGE_ONE = ["The Pellin harbor opened in 1871 after a long dispute about the breakwater.",
            "Fishing boats unload at the north quay every morning before sunrise."]
PAGE_TWO = ["The lighthouse keeper was Ada Vance, who lit the lamp every night for forty years.",
            "Her logbook recorded each passing ship and the weather at dusk."]


def _pdf(path: Path, pages: list[list[str]], **encryption) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for paragraphs in pages:
        pdf.add_page()
        for paragraph in paragraphs:
            pdf.multi_cell(0, 8, paragraph)
            pdf.ln(6)
    if encryption:
        pdf.set_encryption(encryption_method=EncryptionMethod.RC4, **encryption)
    pdf.output(str(path))
    return path


def _docx(path: Path) -> None:
    document = docx.Document()
    document.add_heading("Pump Setup", 1)
    document.add_paragraph("Bolt the pump to the concrete plinth before connecting any hose.")
    document.add_heading("Maintenance", 2)
    document.add_paragraph("Grease the impeller bearing every three months with marine grease.")
    document.save(str(path))


def _pptx(path: Path) -> None:
    deck = Presentation()
    for title, body in [("Quarterly results", "Revenue grew in the spring."),
                        ("Ferry timetable", "The morning ferry to Skellig departs at 07:15.")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(str(path))


def _xlsx(path: Path) -> None:
    book = openpyxl.Workbook()
    prices = book.active
    prices.title = "Prices"
    for row in [["item", "price"], ["lantern oil", 12], ["rope", 4]]:
        prices.append(row)
    book.create_sheet("Stock").append(["lantern oil", 30])
    book.save(str(path))


def _epub(path: Path) -> None:
    book = epub.EpubBook()
    book.set_identifier("mill-book")
    book.set_title("The Mill Book")
    book.set_language("en")
    chapters = []
    for n, (title, text) in enumerate([("Grinding", "The mill ground rye and barley for the village."),
                                       ("The Miller", "Tomas Reyes ran the mill after his father retired.")], 1):
        chapter = epub.EpubHtml(title=title, file_name=f"c{n}.xhtml", lang="en")
        chapter.content = f"<h1>{title}</h1><p>{text}</p>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = tuple(chapters)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    epub.write_epub(str(path), book)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats") / "docs"
    root.mkdir()
    _pdf(root / "manual.pdf", [PAGE_ONE, PAGE_TWO])
    _docx(root / "pump.docx")
    _pptx(root / "deck.pptx")
    _xlsx(root / "stores.xlsx")
    _epub(root / "mill.epub")
    (root / "crew.csv").write_text("name,role\nIda Moss,cook\nBen Ash,deckhand\n", encoding="utf-8")
    (root / "history.htm").write_text(
        "<html><head><title>Town History</title><script>var tracking = 1;</script></head><body>"
        "<h1>Founding</h1><p>The town was founded by salt traders.</p>"
        "<h2>The Great Storm</h2><p>The storm of 1903 destroyed the old pier.</p></body></html>", encoding="utf-8")
    (root / "notes.md").write_text("# Notes\n\nPlain markdown still loads as before.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def minilm():
    return load_embedder("all-minilm-l6-v2")


def _locators(doc) -> list[tuple[str, object]]:
    return [(kind, value) for _, kind, value in doc.locators]


def test_every_format_converts_with_its_locators(folder, tmp_path):
    stats = ConversionStats()
    docs = {d.doc_id: d for d in load_documents(folder, cache_dir=tmp_path / "conv", stats=stats)}
    assert sorted(docs) == ["crew.csv", "deck.pptx", "history.htm", "manual.pdf", "mill.epub", "notes.md",
                            "pump.docx", "stores.xlsx"]
    assert (stats.converted, stats.cached) == (7, 0) and str(stats) == "converted 7, cached 0"
    pdf = docs["manual.pdf"]
    assert _locators(pdf) == [("page", 1), ("page", 2)] and pdf.title == "manual"
    assert pdf.text[pdf.locators[1][0]:].startswith("The lighthouse keeper") and "\f" not in pdf.text
    assert _locators(docs["pump.docx"]) == [("section", "Pump Setup"), ("section", "Maintenance")]
    assert docs["pump.docx"].title == "Pump Setup"
    assert _locators(docs["deck.pptx"]) == [("slide", 1), ("slide", 2)] and "<!--" not in docs["deck.pptx"].text
    assert _locators(docs["stores.xlsx"]) == [("sheet", "Prices"), ("sheet", "Stock")]
    assert "| lantern oil | 12 |" in docs["stores.xlsx"].text
    assert ("section", "The Miller") in _locators(docs["mill.epub"]) and docs["mill.epub"].title == "The Mill Book"
    assert "| Ida Moss | cook |" in docs["crew.csv"].text and docs["crew.csv"].locators == ()
    html = docs["history.htm"]
    assert html.title == "Town History" and "tracking" not in html.text
    assert _locators(html) == [("section", "Founding"), ("section", "The Great Storm")]
    assert docs["notes.md"].locators == ()


def test_index_cites_the_pdf_page_and_an_unchanged_reindex_converts_nothing(folder, tmp_path, minilm, monkeypatch):
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "home"))  # the conversion cache's default place
    spec = KnowledgeSpec(documents=folder, top_k=3)
    info = build_index(spec, tmp_path / "idx", embedder=minilm, cache_dir=tmp_path / "emb")
    assert info["counts"]["converted"] == 7 and info["counts"]["conversions_cached"] == 0
    assert len(list((tmp_path / "home" / "conversions").glob("*.json"))) == 7
    retriever = Retriever.open(tmp_path / "idx", embedder=minilm)
    hit = retriever.search("Who was the lighthouse keeper?")[0]
    assert (hit.doc_id, hit.metadata, hit.locator) == ("manual.pdf", {"page": 2}, "page 2")
    assert "Ada Vance" in hit.text and "1871" not in hit.text  # a chunk never crosses a page
    grease = retriever.search("How often should the impeller bearing be greased?")[0]
    assert (grease.doc_id, grease.locator) == ("pump.docx", 'section "Maintenance"')
    ferry = retriever.search("When does the morning ferry depart?")[0]
    assert (ferry.doc_id, ferry.locator) == ("deck.pptx", "slide 2")

    again = build_index(spec, tmp_path / "idx2", embedder=minilm, cache_dir=tmp_path / "emb", previous=tmp_path / "idx")
    assert again["counts"]["converted"] == 0 and again["counts"]["conversions_cached"] == 7
    assert again["corpus_hash"] == info["corpus_hash"] and again["documents"] == info["documents"]
    assert (tmp_path / "idx" / INFO_FILE).read_bytes() == (tmp_path / "idx2" / INFO_FILE).read_bytes()


def test_cache_is_keyed_by_content_not_name(tmp_path):
    docs, cache = tmp_path / "docs", tmp_path / "conv"
    docs.mkdir()
    _pdf(docs / "a.pdf", [PAGE_ONE, PAGE_TWO])
    first = ConversionStats()
    load_documents(docs, cache_dir=cache, stats=first)
    (docs / "a.pdf").rename(docs / "renamed.pdf")
    _pdf(docs / "b.pdf", [PAGE_TWO])
    second = ConversionStats()
    loaded = load_documents(docs, cache_dir=cache, stats=second)
    assert (first.converted, second.converted, second.cached) == (1, 1, 1)
    assert [d.doc_id for d in loaded] == ["b.pdf", "renamed.pdf"]
    (next(cache.glob("*.json"))).write_text("{damaged", encoding="utf-8")  # a damaged entry is converted again
    third = ConversionStats()
    assert load_documents(docs, cache_dir=cache, stats=third) == loaded and third.converted == 1


@pytest.mark.parametrize("make, fragment", [
    (lambda p: _pdf(p, [[]]), r"scan\.pdf: no text layer \(1 page\(s\), no extractable text.*run OCR first"),
    (lambda p: p.write_bytes(b"%PDF-1.4\n1 0 obj garbage\n"), r"scan\.pdf: cannot be read as a PDF \(.*repair it"),
    (lambda p: _pdf(p, [PAGE_ONE], owner_password="o", user_password="secret"),
     r"scan\.pdf: the PDF is encrypted \(PDFPasswordIncorrect\); save an unencrypted copy"),
], ids=["empty-text", "corrupt", "encrypted"])
def test_unreadable_pdfs_are_one_line_errors_naming_the_file(tmp_path, make, fragment):
    make(tmp_path / "scan.pdf")
    with pytest.raises(DocumentError, match=fragment) as err:
        load_documents(tmp_path, cache_dir=tmp_path / "conv")
    assert "\n" not in str(err.value) and not (tmp_path / "conv").exists()


def test_image_only_pdf_page_is_an_error_not_an_empty_document(tmp_path):
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 80, 80, style="F")  # a drawing, no text: what a scanner's page looks like to a text extractor
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(DocumentError, match=r"scan\.pdf: no text layer.*ocrmypdf"):
        load_documents(tmp_path, cache_dir=tmp_path / "conv")


def test_damaged_office_file_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DocumentError, match=r"broken\.docx: cannot be converted \(.*not a real \.docx file") as err:
        load_documents(tmp_path, cache_dir=tmp_path / "conv")
    assert "\n" not in str(err.value)
    (tmp_path / "broken.docx").unlink()
    (tmp_path / "~$pump.docx").write_bytes(b"\x00lock")  # Word's lock file beside an open document is skipped
    (tmp_path / "a.md").write_text("# A\n\nText.", encoding="utf-8")
    assert [d.doc_id for d in load_documents(tmp_path, cache_dir=tmp_path / "conv")] == ["a.md"]


def test_text_files_keep_their_hashes_and_other_encodings_are_detected(tmp_path):
    (tmp_path / "a.md").write_bytes(b"# Title\r\n\r\nLine one.\rLine two.\n")
    (tmp_path / "latin.txt").write_bytes("Le café crème était très apprécié à Noël, naïve façon.".encode("cp1252"))
    docs = {d.doc_id: d for d in load_documents(tmp_path)}
    md = docs["a.md"]
    assert md.text == "# Title\n\nLine one.\nLine two.\n"  # universal newlines, as text-mode reading always gave
    oracle = json.dumps({"title": "Title", "text": md.text, "metadata": {}}, sort_keys=True, ensure_ascii=False)
    assert md.content_hash == hashlib.sha256(oracle.encode("utf-8")).hexdigest()  # the pre-conversion formula
    assert docs["latin.txt"].text == "Le café crème était très apprécié à Noël, naïve façon."
    (tmp_path / "blob.txt").write_bytes(b"ok\x00\xff\xfe\x80\x81" * 8)
    with pytest.raises(DocumentError, match=r"blob\.txt: not valid UTF-8 \(byte 3\) and its encoding could not be"):
        load_documents(tmp_path)
