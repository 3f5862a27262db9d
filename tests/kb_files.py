"""Small files for the knowledge-base tests, built here rather than stored (the PDF writer is the benchmark's)."""

from __future__ import annotations

from evaluation.documents import make_pdf

__all__ = ["corrupt_pdf", "make_pdf"]


def corrupt_pdf() -> bytes:
    """A PDF header and then nothing a reader can use (a truncated download)."""
    return make_pdf([["a page that will be cut off"]])[:40]
