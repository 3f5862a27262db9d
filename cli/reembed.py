"""``memos-pipeline reembed --model M``: recompute every embedding with model M into a new column, then swap it in.

This process drives the job and the chunker workers (the embedding workers) do it: begin (the new column, or the
previous model's brought back for a rollback), then groups of ``memos.chunker.reembed_batch`` tasks (one group in
flight: live adds wait behind one group at most), then the HNSW index on the new column (built from this process, so no chunker is tied
up for its duration), then finalize on a chunker (catch-up, count check, atomic swap). Progress is checkpointed per
batch in Redis: kill this command (or the worker) at any point and run it again, and it continues from the
completed batches. Searches use the current model until the swap; every process follows the new one after it.

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
    model: str,
    batch_size: int,
    window: int,
    stop_after: int | None,
    timeout: float,
    progress: bool | None,
    force: bool = False,
) -> dict[str, Any]:
    """The whole job from this process; returns the JSON summary (``status`` done, stopped or already_active)."""
    from cli.batchjob import call, drive, progress_bar, require_workers
    from memos_pipeline.jobs import reembed as rx

    t0 = time.perf_counter()
    require_workers(app, settings, "chunker")
    try:
        job, resumed = rx.start_or_resume(settings, model, batch_size, force)
    except rx.AlreadyActive as exc:
        return {"status": "already_active", "reason": str(exc)}
    except (ValueError, rx.JobConflict) as exc:
        raise click.ClickException(str(exc)) from exc
    if resumed and job.batch_size != batch_size:
        click.echo(f"resuming job {job.job_id} with its own batch size {job.batch_size} (not {batch_size})", err=True)
    began = call(app, "memos.chunker.reembed_begin", {"v": 1, "job_id": job.job_id}, timeout)
    if began is None:
        raise click.ClickException(f"job {job.job_id} was replaced while starting; run again")
    job = rx.plan(settings, rx.Job(**began))
    todo = rx.pending(settings, job)
    resumed_from = job.batches - len(todo)
    with progress_bar(job.batches, resumed_from, f"reembed v{job.version} ({job.dims} dims)", progress) as bar:
        # One group in flight, not two as reindex: a batch takes seconds of the model, and a live add queued
        # behind the chunker's current batch should not also wait for the next one.
        batches, rows = drive(
            app,
            "memos.chunker.reembed_batch",
            lambda i: rx.ReembedBatch(job_id=job.job_id, batch=i).model_dump(),
            todo,
            window=window,
            stop_after=stop_after,
            timeout=timeout,
            bar=bar,
            inflight=1,
        )
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        "model": job.spec,
        "version": job.version,
        "dims": job.dims,
        "resumed": resumed,
        "resumed_from": resumed_from,
        "batches": job.batches,
        "batches_this_run": batches,
        "rows_this_run": rows,
        "batch_size": job.batch_size,
        "reused": job.reused,
    }
    if len(todo) > batches:
        summary["status"] = "stopped"
    else:
        if progress is not False:
            click.echo("building the HNSW index on the new column...", err=True)
        try:
            rx.build_index(settings, job.job_id)
        except rx.NotReady as exc:
            raise click.ClickException(f"{exc} (run again to resume)") from exc
        summary.update(call(app, "memos.chunker.reembed_finalize", {"v": 1, "job_id": job.job_id}, timeout))
    seconds = time.perf_counter() - t0
    summary.update(seconds=round(seconds, 3), rows_per_s=round(rows / seconds, 1) if seconds else None)
    return summary


def _status(settings: Settings) -> dict[str, Any]:
    import dataclasses

    from memos_pipeline.jobs import embedding_columns
    from memos_pipeline.jobs import reembed as rx

    cp = rx.Checkpoint(settings)
    job = cp.load()
    state: dict[str, Any] = dataclasses.asdict(job) if job else {"status": "none"}
    if job and not job.finished:
        state["batches_done"] = len(cp.done(job.job_id))
    state.pop("bounds", None)
    state["models"] = embedding_columns.models(settings)
    return state


@click.command("reembed")
@click.option(
    "--model",
    default=None,
    help="The new model: local (all-MiniLM-L6-v2), openai:<model>@<base_url>, or openai:<model> at "
    "MEMOS_EMBEDDER_BASE_URL. The previous model's vectors are kept until the next reembed, so "
    "re-embedding back to it only embeds what was written since.",
)
@click.option(
    "--batch-size",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Rows per batch task (a keyset page of ids); fixed when a job starts. A live add may wait for "
    "one batch: with the local model on two cores, 100 rows take seconds.",
)
@click.option(
    "--window",
    default=None,
    type=click.IntRange(1, 256),
    help="Batch tasks per group (one group in flight). Default 1: one per chunker process; more would "
    "only queue ahead of live adds.",
)
@click.option(
    "--stop-after",
    default=None,
    type=click.IntRange(1),
    help=f"Run at most N batches now, then stop (exit {STOPPED}); run again to continue.",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for one group or step.")
@click.option("--force", is_flag=True, help="Recompute even if the model is already the active one.")
@click.option("--status", "show_status", is_flag=True, help="Print the current or last job and the models, exit.")
@click.option("--abort", is_flag=True, help="Abandon the unfinished job and drop its column.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary (no progress bar).")
def reembed(
    model: str | None,
    batch_size: int,
    window: int | None,
    stop_after: int | None,
    timeout: float,
    force: bool,
    show_status: bool,
    abort: bool,
    as_json: bool,
) -> None:
    """Recompute every embedding with another model and switch to it atomically.

    Searches keep using the current model until the swap; adds arriving meanwhile are caught up. Resumable: run
    it again after a crash or a kill and it continues from the last completed batch. Needs a running chunker
    worker. Prints a JSON summary (rows, model version, dimensions, rows/s).
    """
    from cli.batchjob import call, require_workers
    from memos_pipeline.celery_app import make_celery
    from memos_pipeline.config import get_settings
    from memos_pipeline.jobs import reembed as rx

    settings = get_settings()
    if show_status:
        click.echo(json.dumps(_status(settings), indent=2))
        return
    app = make_celery(settings)
    if abort:
        job = rx.Checkpoint(settings).load()
        if job is None or job.finished:
            click.echo("no unfinished reembed")
            return
        require_workers(app, settings, "chunker")
        call(app, "memos.chunker.reembed_abort", {"v": 1, "job_id": job.job_id}, timeout)
        click.echo(f"aborted job {job.job_id}; the column of {job.spec} is dropped")
        return
    if not model:
        raise click.UsageError("--model is required (or --status / --abort)")
    summary = run(
        settings,
        app,
        model=model,
        batch_size=batch_size,
        window=window or rx.default_window(settings),
        stop_after=stop_after,
        timeout=timeout,
        progress=False if as_json else None,
        force=force,
    )
    click.echo(json.dumps(summary, indent=None if as_json else 2))
    if summary["status"] == "stopped":
        sys.exit(STOPPED)


if __name__ == "__main__":
    reembed()
