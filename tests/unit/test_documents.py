"""The document splitter and the readers (memos_pipeline/text/documents.py, readers.py): pure functions."""

from __future__ import annotations

import itertools

import pytest
from kb_files import corrupt_pdf, make_pdf

from memos_pipeline.text.documents import Block, sentences, split_document
from memos_pipeline.text.readers import (
    DocumentError,
    check,
    decode_text,
    detect_format,
    html_blocks,
    markdown_blocks,
    pdf_blocks,
    plain_blocks,
    read_blocks,
)

pytestmark = pytest.mark.unit


def test_short_document_is_one_passage_per_section() -> None:
    blocks = [Block("Intro.", ("Guide",)), Block("More intro.", ("Guide",)), Block("Run pip.", ("Guide", "Install"))]
    passages = split_document(blocks)
    assert [p.text for p in passages] == ["Intro.\n\nMore intro.", "Run pip."]
    assert [p.title for p in passages] == ["Guide", "Guide > Install"]
    assert [p.idx for p in passages] == [0, 1]
    assert passages[1].info() == {"passage": 1, "section": "Guide > Install"}


def test_long_paragraph_is_cut_at_sentences_with_overlap() -> None:
    text = " ".join(f"Sentence {i} is about topic {i}." for i in range(100))
    passages = split_document([Block(text, ("A",), 3)], max_chars=200, overlap_chars=60)
    assert len(passages) > 5
    for p in passages:
        assert len(p.text) <= 200 + 60 + 2
        assert p.text.endswith(".")  # cut at sentence ends, never mid-sentence
        assert p.page_start == p.page_end == 3
    for before, after in itertools.pairwise(passages):
        # the overlap: the next passage starts with the last sentences of the one before (at most 60 characters)
        prev, head = sentences(before.text), sentences(after.text)
        carried = next(i for i, s in enumerate(head) if s not in prev)
        assert carried >= 1 and head[:carried] == prev[-carried:]
        assert len(" ".join(head[:carried])) <= 60
    every = {s for p in passages for s in sentences(p.text)}
    assert every == set(sentences(text))  # nothing lost


def test_no_overlap_across_sections_and_pages_span() -> None:
    blocks = [Block("x" * 50 + ".", (), 1), Block("y" * 50 + ".", (), 2), Block("Other.", ("B",), 2)]
    passages = split_document(blocks, max_chars=120, overlap_chars=30)
    assert passages[0].page_start == 1 and passages[0].page_end == 2
    assert passages[0].info()["page_end"] == 2
    assert passages[-1].text == "Other."


def test_a_sentence_longer_than_a_passage_is_cut_at_spaces() -> None:
    words = " ".join(["word"] * 100)
    passages = split_document([Block(words)], max_chars=50, overlap_chars=0)
    assert all(len(p.text) <= 50 for p in passages)
    assert " ".join(p.text for p in passages).split() == words.split()


def test_blank_blocks_give_no_passages() -> None:
    assert split_document([Block("  "), Block("\n")]) == []


def test_markdown_headings_and_code_fences() -> None:
    md = "# Guide\n\nIntro.\n\n## Install\n\n```\n# a comment, not a heading\n```\n\n### Deep\n\nDeep.\n\n# Other\n\nSetext\n------\n\nUnder."
    got = [(b.text, b.section) for b in markdown_blocks(md)]
    assert got == [
        ("Intro.", ("Guide",)),
        ("```\n# a comment, not a heading\n```", ("Guide", "Install")),
        ("Deep.", ("Guide", "Install", "Deep")),
        ("Under.", ("Other", "Setext")),
    ]


def test_html_blocks_headings_entities_no_scripts() -> None:
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body><h1>Top</h1><p>Fish &amp; chips.</p>"
        "<h2>Sub</h2><ul><li>one</li><li>two</li></ul><script>var secret = 1</script><h1>Next</h1><p>Last.</p>"
    )
    got = [(b.text, b.section) for b in html_blocks(html)]
    assert got == [
        ("Fish & chips.", ("Top",)),
        ("one", ("Top", "Sub")),
        ("two", ("Top", "Sub")),
        ("Last.", ("Next",)),
    ]


def test_plain_text_paragraphs() -> None:
    assert [b.text for b in plain_blocks("one\nline\n\n\n two \r\n\r\nthree")] == ["one\nline", "two", "three"]


def test_pdf_pages_are_numbered() -> None:
    blocks = pdf_blocks(make_pdf([["First page (one)."], ["Second page."]]))
    assert [(b.text, b.page) for b in blocks] == [("First page (one).", 1), ("Second page.", 2)]


@pytest.mark.parametrize(
    ("name", "content_type", "data", "fmt"),
    [
        ("a.txt", None, b"x", "text"),
        ("a.MD", None, b"x", "markdown"),
        ("a.htm", None, b"x", "html"),
        ("a.pdf", None, b"x", "pdf"),
        ("noext", "application/pdf", b"x", "pdf"),
        ("noext", "text/markdown; charset=utf-8", b"x", "markdown"),
        ("noext", None, b"%PDF-1.7 ...", "pdf"),
        ("noext", None, b"  <!DOCTYPE html><html>", "html"),
        ("noext", "application/octet-stream", b"hello", "text"),
    ],
)
def test_detect_format(name: str, content_type: str | None, data: bytes, fmt: str) -> None:
    assert detect_format(name, content_type, data) == fmt


@pytest.mark.parametrize(("name", "content_type"), [("a.docx", None), ("a.exe", None), ("x", "image/png")])
def test_unsupported_types_say_what_is_supported(name: str, content_type: str | None) -> None:
    with pytest.raises(DocumentError, match=r"unsupported .*PDF"):
        detect_format(name, content_type, b"data")


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        ("text", b"", "empty"),
        ("text", b"  \n ", "empty"),
        ("markdown", b"# Only a heading\n", "no text"),
        ("text", b"\xff\xfe\x00\xd8", "UTF-16"),
        ("text", b"caf\xe9", "not UTF-8"),
        ("text", b"a\x00b", "NUL"),
        ("pdf", b"not a pdf at all", "not a readable PDF"),
        ("pdf", corrupt_pdf(), "not a readable PDF"),
    ],
)
def test_bad_files_are_refused_with_a_reason(fmt: str, data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        check(fmt, data)


def test_text_decoding_keeps_text_drops_control_characters() -> None:
    assert decode_text("\ufeffhé\x07llo".encode()) == "héllo"
    assert decode_text("hi".encode("utf-16")) == "hi"


def test_read_blocks_of_each_format() -> None:
    assert read_blocks("text", b"a\n\nb")[1].text == "b"
    assert read_blocks("markdown", b"# T\n\nbody")[0].section == ("T",)
    assert read_blocks("html", b"<h2>S</h2><p>body</p>")[0].section == ("S",)
    assert read_blocks("pdf", make_pdf([["body"]]))[0].page == 1
