"""``memos-pipeline reindex``: rebuild the BM25 index from Postgres into a new generation, then swap it in.

This process drives the job and the indexer workers do it: begin (new generation, dual-write on), then groups of
``memos.indexer.reindex_batch`` tasks (two groups in flight: the worker never idles between groups, and a live
upsert queued meanwhile waits behind at most two groups, not behind the whole job), then finalize (catch-up, count
check, atomic swap, old generation dropped). Progress is checkpointed per batch in Redis: kill this command (or the
worker) at any point and run it again, and it continues from the completed batches. Searches read the old
generation until the swap.

Heavy imports (Celery, Redis, SQLAlchemy) happen inside the functions: registering this command must not slow
down ``memos-pipeline --help``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from cli.batchjob import STOPPED

if TYPE_CHECKING:
    from celery import Celery

    from memos_pipeline.config import Settings


def run(
    settings: Settings,
    app: Celery,
    *,
    tenant: str | None,
    batch_size: int,
    window: int,
    stop_after: int | None,
    timeout: float,
    progress: bool | None,
) -> dict[str, Any]:
    """The whole job from this process; returns the JSON summary (``status`` done or stopped)."""
    from cli.batchjob import call, drive, progress_bar, require_workers
    from memos_pipeline.jobs import reindex as rx

    t0 = time.perf_counter()
    require_workers(app, settings, "indexer")
    try:
        job, resumed = rx.start_or_resume(settings, rx.resolve_tenant(settings, tenant), batch_size)
    except (ValueError, rx.JobConflict) as exc:
        raise click.ClickException(str(exc)) from exc
    if resumed and job.batch_size != batch_size:
        click.echo(f"resuming job {job.job_id} with its own batch size {job.batch_size} (not {batch_size})", err=True)
    began = call(app, "memos.indexer.reindex_begin", {"v": 1, "job_id": job.job_id}, timeout)
    if began is None:
        raise click.ClickException(f"job {job.job_id} was replaced while starting; run again")
    job = rx.plan(settings, rx.Job(**began))
    todo = rx.pending(settings, job)
    resumed_from = job.batches - len(todo)
    with progress_bar(job.batches, resumed_from, f"reindex gen {job.generation}", progress) as bar:
        batches, docs = drive(
            app,
            "memos.indexer.reindex_batch",
            lambda i: rx.ReindexBatch(job_id=job.job_id, batch=i).model_dump(),
            todo,
            window=window,
            stop_after=stop_after,
            timeout=timeout,
            bar=bar,
        )
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        "tenant_id": job.tenant_id,
        "generation": job.generation,
        "resumed": resumed,
        "resumed_from": resumed_from,
        "batches": job.batches,
        "batches_this_run": batches,
        "docs_this_run": docs,
        "batch_size": job.batch_size,
    }
    if len(todo) > batches:
        summary["status"] = "stopped"
    else:
        summary.update(call(app, "memos.indexer.reindex_finalize", {"v": 1, "job_id": job.job_id}, timeout))
    seconds = time.perf_counter() - t0
    summary.update(seconds=round(seconds, 3), docs_per_s=round(docs / seconds, 1) if seconds else None)
    return summary


@click.command("reindex")
@click.option("--tenant", default=None, help="Only this tenant (name or id); the others are copied as they are.")
@click.option(
    "--batch-size",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Memories per batch task (a keyset page of ids); fixed when a job starts.",
)
@click.option(
    "--window",
    default=None,
    type=click.IntRange(1, 256),
    help="Batch tasks per group (two groups in flight). Default: 1 with the embedded index (one writer: "
    "more would only queue ahead of live upserts), 4 with Elasticsearch (parallel indexers).",
)
@click.option(
    "--stop-after",
    default=None,
    type=click.IntRange(1),
    help=f"Run at most N batches now, then stop (exit {STOPPED}); run again to continue.",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for one group or step.")
@click.option("--status", "show_status", is_flag=True, help="Print the current or last job and exit.")
@click.option("--abort", is_flag=True, help="Abandon the unfinished job and drop its generation.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary (no progress bar).")
def reindex(
    tenant: str | None,
    batch_size: int,
    window: int | None,
    stop_after: int | None,
    timeout: float,
    show_status: bool,
    abort: bool,
    as_json: bool,
) -> None:
    """Rebuild the BM25 index from Postgres into a new generation and swap it in atomically.

    Searches keep reading the current generation until the swap; adds arriving meanwhile reach both. Resumable:
    run it again after a crash or a kill and it continues from the last completed batch. Needs a running
    indexer worker. Prints a JSON summary (documents, rows in Postgres, generation, docs/s).
    """
    import dataclasses

    from cli.batchjob import call, require_workers
    from memos_pipeline.celery_app import make_celery
    from memos_pipeline.config import get_settings
    from memos_pipeline.jobs import reindex as rx

    settings = get_settings()
    cp = rx.Checkpoint(settings)
    if show_status:
        job = cp.load()
        state: dict[str, Any] = dataclasses.asdict(job) if job else {"status": "none"}
        if job and not job.finished:
            state["batches_done"] = len(cp.done(job.job_id))
        state.pop("bounds", None)
        click.echo(json.dumps(state, indent=2))
        return
    app = make_celery(settings)
    if abort:
        job = cp.load()
        if job is None or job.finished:
            click.echo("no unfinished re-index")
            return
        require_workers(app, settings, "indexer")
        call(app, "memos.indexer.reindex_abort", {"v": 1, "job_id": job.job_id}, timeout)
        click.echo(f"aborted job {job.job_id}; generation {job.generation} dropped")
        return
    summary = run(
        settings,
        app,
        tenant=tenant,
        batch_size=batch_size,
        window=window or rx.default_window(settings),
        stop_after=stop_after,
        timeout=timeout,
        progress=False if as_json else None,
    )
    click.echo(json.dumps(summary, indent=None if as_json else 2))
    if summary["status"] == "stopped":
        sys.exit(STOPPED)


if __name__ == "__main__":
    reindex()
