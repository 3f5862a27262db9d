"""Documents for the knowledge-base benchmark and tests: a PDF written by hand (one text object per page in
Helvetica, the smallest file ``pypdf`` reads text from; no PDF library needed to make one) and pages of prose."""

from __future__ import annotations

import io
import random

_WORDS = (
    "harbour lantern keeper island ledger copper signal tide winter orchard valley river mill bridge market "
    "weaver baker archive storm beacon compass granite meadow falcon journey village quarry timber canal "
    "station garden observatory glacier harvest workshop cathedral fortress lighthouse library"
).split()


def _escape(line: str) -> bytes:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1", "replace")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A PDF whose page i shows the lines of ``pages[i]``, one under the other (an empty list: a page without
    text, as a scanned page is to a text extractor)."""
    objects: list[bytes] = [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]  # object 1
    pages_obj = 2 + 2 * len(pages)  # after the font and a (content, page) pair per page
    kids = []
    for lines in pages:
        shown = b" ".join(b"(" + _escape(line) + b") '" for line in lines)
        stream = b"BT /F1 11 Tf 72 740 Td 14 TL " + shown + b" ET"
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 1 0 R >> >> "
            b"/Contents %d 0 R >>" % (pages_obj, content)
        )
        kids.append(len(objects))
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
    objects.append(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % o for o in offsets)
    trailer = b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
    out.write(trailer % (len(objects) + 1, len(objects), xref))
    return out.getvalue()


def prose_pages(n: int, lines_per_page: int = 40, seed: int = 7) -> list[list[str]]:
    """``n`` pages of sentences (about 2,000 characters a page, a dense page of a report), page i naming its
    number in its first line so a search can find a page."""
    rng = random.Random(seed)
    pages = []
    for i in range(1, n + 1):
        lines = [f"Page {i}: notes on the {rng.choice(_WORDS)} and the {rng.choice(_WORDS)}."]
        while len(lines) < lines_per_page:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 10))]
            lines.append(" ".join(words).capitalize() + ".")
        pages.append(lines)
    return pages
