"""Splitting a document into passages: the knowledge-base counterpart of ``chunking.py`` (which windows turns).

A document arrives as blocks (:mod:`memos_pipeline.text.readers` makes them from text, Markdown, HTML or PDF): a
paragraph of text, the heading path it sits under and the page it is on. :func:`split_document` packs consecutive
blocks of one section into passages of at most ``max_chars`` characters, never across a heading (a passage is about
one thing, and its section names it), and starts each passage after the first of a section with the last sentences
of the one before (``overlap_chars``), so a fact cut at a passage boundary is still whole in one of the two. A
paragraph longer than a passage is cut at sentence ends, and a sentence longer than that at spaces.

Pure functions, no I/O: the same blocks always give the same passages, which is what makes the document stage
idempotent (a redelivered task writes the same rows again, keyed by passage index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# all-MiniLM-L6-v2 reads 256 word pieces (about 1,000 characters of English): a longer passage is embedded by its
# beginning only. Overlap: about two sentences.
MAX_CHARS = 1000
OVERLAP_CHARS = 150
SECTION_SEP = " > "

# A sentence ends at . ! ? followed by space, or right after a CJK full stop, exclamation or question mark.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])")


@dataclass(frozen=True)
class Block:
    """One paragraph (or list item, table row, ...) of a document."""

    text: str
    section: tuple[str, ...] = ()  # the headings above it, outermost first
    page: int | None = None  # 1-based, for paged formats (PDF)


@dataclass(frozen=True)
class Passage:
    idx: int
    text: str
    section: tuple[str, ...]
    page_start: int | None
    page_end: int | None

    @property
    def title(self) -> str:
        return SECTION_SEP.join(self.section)

    def info(self) -> dict[str, Any]:
        """Where the passage is in its document (a memory's ``info``)."""
        out: dict[str, Any] = {"passage": self.idx}
        if self.section:
            out["section"] = self.title
        if self.page_start is not None:
            out["page"] = self.page_start
            if self.page_end != self.page_start:
                out["page_end"] = self.page_end
        return out


@dataclass(frozen=True)
class _Piece:
    text: str
    page: int | None
    starts_block: bool  # the first piece of its block: joined to the one before by a blank line, not a space


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def _cut(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at spaces when there are any (else anywhere)."""
    parts: list[str] = []
    while len(text) > limit:
        at = text.rfind(" ", 0, limit + 1)
        if at <= 0:
            at = limit
        parts.append(text[:at].rstrip())
        text = text[at:].lstrip()
    if text:
        parts.append(text)
    return parts


def _pieces(block: Block, max_chars: int) -> list[_Piece]:
    """A block as pieces that each fit in a passage: whole when it fits, else sentences, else parts of them."""
    if len(block.text) <= max_chars:
        return [_Piece(block.text, block.page, True)]
    texts = [part for s in sentences(block.text) for part in _cut(s, max_chars)]
    return [_Piece(t, block.page, i == 0) for i, t in enumerate(texts)]


def _tail(pieces: list[_Piece], overlap_chars: int) -> list[_Piece]:
    """The last sentences of a passage, at most ``overlap_chars`` together: the start of the next one."""
    if overlap_chars <= 0 or not pieces:
        return []
    out: list[str] = []
    size = 0
    for s in reversed([s for p in pieces for s in sentences(p.text)]):
        if size + len(s) > overlap_chars:
            if not out:  # one long last sentence: its last words, so the overlap is never empty
                words = s[-overlap_chars:]
                out.append(words[words.find(" ") + 1 :] if " " in words else words)
            break
        out.append(s)
        size += len(s) + 1
    return [_Piece(" ".join(reversed(out)), pieces[-1].page, True)]


def _join(pieces: list[_Piece]) -> str:
    text = ""
    for p in pieces:
        text += (("\n\n" if p.starts_block else " ") if text else "") + p.text
    return text


def split_document(
    blocks: list[Block], max_chars: int = MAX_CHARS, overlap_chars: int = OVERLAP_CHARS
) -> list[Passage]:
    """Passages of at most ``max_chars`` characters (plus the overlap), one section each, in document order."""
    if max_chars < 1 or overlap_chars < 0:
        raise ValueError("max_chars must be positive and overlap_chars not negative")
    passages: list[Passage] = []

    def emit(section: tuple[str, ...], pieces: list[_Piece]) -> None:
        pages = [p.page for p in pieces if p.page is not None]
        text = _join(pieces)
        passages.append(Passage(len(passages), text, section, min(pages, default=None), max(pages, default=None)))

    section: tuple[str, ...] | None = None
    current: list[_Piece] = []  # the passage being filled
    fresh = 0  # how many of its pieces are new (not the overlap carried over from the passage before)
    carried = 0  # the length of that overlap: a passage holds max_chars of new text besides it
    for block in blocks:
        if not block.text.strip():
            continue
        if block.section != section:
            if fresh:
                emit(section or (), current)
            section, current, fresh, carried = block.section, [], 0, 0
        for piece in _pieces(block, max_chars):
            if fresh and len(_join([*current, piece])) > max_chars + carried:
                emit(section, current)
                current, fresh = _tail(current, overlap_chars), 0
                carried = len(current[0].text) + 2 if current else 0
            current.append(piece)
            fresh += 1
    if fresh:
        emit(section or (), current)
    return passages
