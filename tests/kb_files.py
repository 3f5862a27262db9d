"""Small files for the knowledge-base tests, built here rather than stored: a PDF written by hand (one text object
per page in Helvetica, the smallest file pypdf reads text from) and damaged variants of it."""

from __future__ import annotations

import io


def _escape(line: str) -> bytes:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A PDF whose page i shows the lines of ``pages[i]``, one under the other."""
    objects: list[bytes] = [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]  # object 1
    pages_obj = 2 + 2 * len(pages)  # after the font and a (content, page) pair per page
    kids = []
    for lines in pages:
        stream = b"BT /F1 11 Tf 72 740 Td 14 TL " + b" ".join(b"(" + _escape(line) + b") '" for line in lines) + b" ET"
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
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, len(objects), xref)
    )
    return out.getvalue()


def corrupt_pdf() -> bytes:
    """A PDF header and then nothing a reader can use (a truncated download)."""
    return make_pdf([["a page that will be cut off"]])[:40]
