"""``memos-pipeline import-kb DIR --kb NAME --tenant T``: every supported file under a directory into a knowledge base.

Each file is checked and accepted exactly as /add/knowledgebase-file accepts it (same checks, same durable row +
ingest + outbox row, same task on the queues), one transaction per file, so an import stopped half-way keeps what it
accepted and a re-run skips those (the same file again is the same file). Files the API would refuse are listed with
the reason and the import goes on. ``--wait`` then follows the processing until every file is done or failed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from memos_pipeline.config import Settings, get_settings
from memos_pipeline.ingest import lifecycle, outbox
from memos_pipeline.ingest.accept import publish_accepted
from memos_pipeline.kb_schemas import MAX_FILE_BYTES
from memos_pipeline.storage import knowledgebases as kb
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.readers import DocumentError, check, detect_format

SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf"})


def _read(path: Path) -> kb.FileUpload:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DocumentError(f"{path.stat().st_size / 2**20:.1f} MB, the limit is {MAX_FILE_BYTES // 2**20} MB")
    data = path.read_bytes()
    fmt = detect_format(path.name, None, data)
    check(fmt, data)
    return kb.FileUpload(name=path.name, format=fmt, content_type="", data=data)


def import_dir(
    settings: Settings,
    sender: outbox.TaskSender,
    tenant: str,
    directory: Path,
    kb_name: str,
    *,
    description: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Import the supported files under ``directory`` (recursively, in name order) into the tenant's newest base
    named ``kb_name`` (created if there is none). Returns a summary: the base, accepted/duplicate/rejected files."""
    with session_scope(settings) as s:
        tenant_id = tenants.tenant_by_name(s, tenant)
        if tenant_id is None:
            raise click.ClickException(f"no tenant {tenant!r} (create it with `memos-pipeline create-key`)")
        base = kb.base_by_name(s, tenant_id, kb_name) or kb.create_base(s, tenant_id, kb_name, description)
        kb_id = base.id
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    trace_id = f"import-kb-{uuid.uuid4().hex[:12]}"
    accepted: list[str] = []
    duplicates: list[str] = []
    rejected: list[dict[str, str]] = []
    for path in tqdm(paths, desc=f"import into {kb_name}", unit="file", disable=not progress):
        rel = str(path.relative_to(directory))
        try:
            upload = _read(path)
        except (DocumentError, OSError) as exc:
            rejected.append({"file": rel, "reason": str(exc)})
            continue
        with session_scope(settings) as s:
            current = kb.get_base(s, tenant_id, kb_id)
            if current is None:
                raise click.ClickException(f"the knowledge base {kb_id} was deleted during the import")
            f, acc = kb.accept_file(s, tenant_id, current, upload, trace_id=trace_id)
            file_id = str(f.id)
        publish_accepted(settings, sender, acc, lifecycle.DOCUMENT, trace_id)
        (duplicates if acc.duplicate else accepted).append(file_id)
    outbox.sent_marker(settings).flush()
    return {
        "knowledgebase_id": str(kb_id),
        "knowledgebase_name": kb_name,
        "files_seen": len(paths),
        "accepted": len(accepted),
        "duplicates": len(duplicates),
        "rejected": rejected,
        "file_ids": accepted + duplicates,
    }


def wait_processed(
    settings: Settings, tenant: str, file_ids: list[str], timeout: float, progress: bool = True
) -> dict[str, int]:
    """Poll the files until none is processing (or ``timeout``); returns how many ended in each status."""
    with session_scope(settings) as s:
        tenant_id = tenants.tenant_by_name(s, tenant)
    if tenant_id is None or not file_ids:
        return {}
    deadline = time.monotonic() + timeout
    with tqdm(total=len(file_ids), desc="processing", unit="file", disable=not progress) as bar:
        while True:
            counts: Counter[str] = Counter()
            for i in range(0, len(file_ids), 100):
                with session_scope(settings) as s:
                    rows, _ = kb.page_files(s, tenant_id, file_ids=file_ids[i : i + 100], size=100)
                    counts.update(kb.file_status(ingest)[0] for _, ingest in rows)
            bar.update(len(file_ids) - counts["processing"] - bar.n)
            if counts["processing"] == 0 or time.monotonic() > deadline:
                return dict(counts)
            time.sleep(0.5)


@click.command("import-kb")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--kb", "kb_name", required=True, help="Knowledge base name (the newest of that name; created if new).")
@click.option("--tenant", required=True, help="Tenant that owns the base (see create-key).")
@click.option("--description", default="", help="Description of a base created by this import.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the processing until it ends.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits at most.")
def import_kb(directory: Path, kb_name: str, tenant: str, description: str, wait: bool, timeout: float) -> None:
    """Add every .txt, .md, .html and .pdf file under DIRECTORY to a knowledge base, as /add/knowledgebase-file
    does (durable, then processed by the workers); prints a JSON summary. Files it cannot take are listed with the
    reason; a re-run skips the files already imported."""
    from memos_pipeline.celery_app import make_celery
    from memos_pipeline.storage import migrate, pgserver

    settings = get_settings()
    pgserver.start(settings)
    migrate.upgrade(settings)
    summary = import_dir(settings, make_celery(settings), tenant, directory, kb_name, description=description)
    if wait:
        summary["status"] = wait_processed(settings, tenant, summary["file_ids"], timeout)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "file_ids"}, indent=2, ensure_ascii=False))


@click.command("bench-kb")
@click.option("--pages", default=200, show_default=True, help="Pages of the PDF uploaded.")
def bench_kb(pages: int) -> None:
    """Knowledge-base benchmark on a stack of its own: a PDF of PAGES pages of prose uploaded over HTTP and timed
    until its passages are searchable; prints JSON (pages/s end to end, stage times, search latency with the base)."""
    from evaluation.kb_bench import run_kb_bench

    click.echo(json.dumps(run_kb_bench(get_settings(), pages=pages), indent=2))
