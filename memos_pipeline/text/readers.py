"""Reading a knowledge-base file into blocks (:class:`memos_pipeline.text.documents.Block`): plain text, Markdown,
HTML (the standard library's parser) and PDF (``pypdf``).

``detect_format`` says which reader a file needs (its name's extension, else its content type, else its first
bytes); ``check`` is the cheap test the API runs before accepting a file (empty, not UTF-8, not a PDF), so most bad
files are a 422 at once; ``read_blocks`` is the whole read, run by the document stage. Every failure is a
:class:`DocumentError` whose message says what is wrong in words a client can act on.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from html.parser import HTMLParser
from pathlib import PurePosixPath

from memos_pipeline.text.documents import Block

FORMATS = ("text", "markdown", "html", "pdf")
_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_CONTENT_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
SUPPORTED = "plain text (.txt), Markdown (.md), HTML (.html) or PDF (.pdf)"
# Control characters other than tab and newlines: Postgres cannot store NUL, and none of them is text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class DocumentError(ValueError):
    """A file that cannot be read as the format it claims: the reason, for the client."""


def detect_format(name: str | None, content_type: str | None, data: bytes) -> str:
    """The reader for a file: by extension, else by content type, else by its first bytes."""
    suffix = PurePosixPath(name or "").suffix.lower()
    if suffix:
        if suffix in _EXTENSIONS:
            return _EXTENSIONS[suffix]
        raise DocumentError(f"unsupported file type {suffix!r}; send {SUPPORTED}")
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime and mime not in ("application/octet-stream", "text/plain"):
        if mime in _CONTENT_TYPES:
            return _CONTENT_TYPES[mime]
        raise DocumentError(f"unsupported content type {mime!r}; send {SUPPORTED}")
    head = data[:512].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is dropped; UTF-16 with a BOM is read too), with control characters removed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"not valid UTF-16 text at byte {exc.start}") from None
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"not UTF-8 text (invalid byte at {exc.start}); is it a binary file?") from None
    if "\x00" in text:
        raise DocumentError("contains NUL bytes: a binary file, not text")
    return _CONTROL.sub("", text)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]


def plain_blocks(text: str) -> list[Block]:
    return [Block(p) for p in _paragraphs(text)]


_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def markdown_blocks(text: str) -> list[Block]:
    """Paragraphs under their heading path (ATX ``#`` and setext underlined headings); fenced code is one block
    whatever it holds (a ``#`` comment in it is not a heading)."""
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []  # (level, title) of the headings above, outermost first
    para: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if para:
            blocks.append(Block("\n".join(para).strip(), tuple(title for _, title in path)))
            para.clear()

    def heading(level: int, title: str) -> None:
        flush()
        path[:] = [(lv, t) for lv, t in path if lv < level]
        if title.strip():
            path.append((level, title.strip()))

    for line in text.replace("\r\n", "\n").split("\n"):
        m = _FENCE.match(line)
        if fence is not None:
            para.append(line)
            if m and m.group(1) == fence:
                fence = None
                flush()
            continue
        if m:
            flush()
            fence = m.group(1)
            para.append(line)
            continue
        m = _ATX.match(line)
        if m:
            heading(len(m.group(1)), m.group(2))
            continue
        if _SETEXT.match(line) and len(para) == 1:
            title = para.pop()
            heading(1 if line.strip().startswith("=") else 2, title)
            continue
        if not line.strip():
            flush()
            continue
        para.append(line)
    flush()
    return [b for b in blocks if b.text]


_BLOCK_TAGS = frozenset(
    "p div li ul ol br tr table pre blockquote section article header footer aside dd dt figcaption main nav".split()
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template", "svg"})


class _HtmlBlocks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.path: list[tuple[int, str]] = []  # as markdown_blocks
        self.text: list[str] = []
        self.heading: int | None = None  # the level of the heading being read
        self.skipping = 0

    def _flush(self) -> None:
        text = re.sub(r"[ \t\r\f\v]+", " ", "".join(self.text)).strip()
        self.text.clear()
        if not text:
            return
        if self.heading is not None:
            level = self.heading
            self.path[:] = [(lv, t) for lv, t in self.path if lv < level]
            self.path.append((level, text))
        else:
            self.blocks.append(Block(text, tuple(t for _, t in self.path)))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = int(tag[1])
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = None
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.text.append(data)


def html_blocks(text: str) -> list[Block]:
    """Block elements (p, li, div, td rows, ...) under the h1-h6 headings before them; scripts and styles left out."""
    parser = _HtmlBlocks()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.blocks


def _pdf_reader(data: bytes):  # type: ignore[no-untyped-def]
    import pypdf
    from pypdf.errors import PyPdfError

    # pypdf logs every repair it attempts on a damaged file as a warning: our answer names the problem instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # a damaged file's repair notes: the error below (if any) says what matters
            warnings.simplefilter("ignore")
            reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError("the PDF is encrypted; send it without a password")
        if len(reader.pages) == 0:
            raise DocumentError("the PDF has no pages")
    except PyPdfError as exc:
        raise DocumentError(f"not a readable PDF: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(f"not a readable PDF: {type(exc).__name__}: {exc}") from None
    return reader


def pdf_blocks(data: bytes) -> list[Block]:
    """Each page's paragraphs, numbered by page; a PDF without a text layer (scanned pages) is an error."""
    reader = _pdf_reader(data)
    blocks: list[Block] = []
    for number, page in enumerate(reader.pages, 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                text = page.extract_text() or ""
        except Exception as exc:  # a damaged content stream: that page has no text, the others still count
            logging.getLogger(__name__).warning("page %d of a PDF has no readable text: %s", number, exc)
            continue
        blocks.extend(Block(p, (), number) for p in _paragraphs(_CONTROL.sub("", text)))
    if not blocks:
        raise DocumentError("no text in the PDF (scanned pages need OCR, which is not done here)")
    return blocks


def check(fmt: str, data: bytes) -> None:
    """The API's test before accepting a file: not empty, decodable, a PDF that opens and has pages."""
    if not data.strip():
        raise DocumentError("the file is empty")
    if fmt == "pdf":
        _pdf_reader(data)
        return
    if not read_blocks(fmt, data):
        raise DocumentError("the file has no text")


def read_blocks(fmt: str, data: bytes) -> list[Block]:
    """The file's blocks in document order."""
    if fmt == "pdf":
        return pdf_blocks(data)
    text = decode_text(data)
    if fmt == "markdown":
        return markdown_blocks(text)
    if fmt == "html":
        return html_blocks(text)
    if fmt == "text":
        return plain_blocks(text)
    raise DocumentError(f"unsupported format {fmt!r}; send {SUPPORTED}")
