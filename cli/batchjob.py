"""``memos-pipeline reindex`` and ``reembed``: one driver for the batch jobs (``memos_pipeline.jobs``).

This process drives a job and the workers of its queue do it: begin (``reindex``: a new BM25 generation with
dual-write on; ``reembed``: a new embedding column), then groups of ``<kind>_batch`` tasks, a bounded number in
flight (so a live task queued meanwhile waits behind at most that many groups, not behind the whole job), then
finalize (catch-up, count check, atomic swap; ``reembed`` first builds the HNSW index on the new column from this
process, so no chunker is tied up for its duration). Progress is checkpointed per batch in Redis: kill this
command (or the worker) at any point and run it again, and it continues from the completed batches. Searches use
the old generation or model until the swap.

Heavy imports (Celery, Redis, SQLAlchemy) happen inside the functions: registering the commands must not slow
down ``memos-pipeline --help``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from celery import Celery
    from tqdm import tqdm

    from memos_pipeline.config import Settings
    from memos_pipeline.jobs.runner import JobKind

STOPPED = 3  # exit status of --stop-after: resumable, not an error


def call(app: Celery, name: str, payload: dict[str, Any], timeout: float) -> Any:
    """Run one step task and wait for its result."""
    result = app.send_task(name, args=[payload], ignore_result=False)
    try:
        return result.get(timeout=timeout)
    finally:
        result.forget()


def require_workers(app: Celery, settings: Settings, queue: str) -> None:
    """Fail with a hint instead of waiting forever on a queue nobody consumes."""
    with app.connection_for_write() as conn:
        try:
            consumers = conn.default_channel.queue_declare(settings.queue(queue), passive=True).consumer_count
        except Exception:
            consumers = 0
    if not consumers:
        raise click.ClickException(
            f"no worker consumes the {settings.queue(queue)!r} queue: start one (memos-pipeline worker -Q {queue})"
        )


def drive(
    app: Celery,
    task: str,
    payload: Callable[[int], dict[str, Any]],
    todo: list[int],
    *,
    window: int,
    stop_after: int | None,
    timeout: float,
    bar: tqdm,
    inflight: int = 2,
) -> tuple[int, int]:
    """Run the ``todo`` batches as groups of ``window`` ``task`` tasks (``payload(i)`` for batch ``i``), ``inflight``
    groups at a time. Returns (batches, rows) done, the rows as the tasks report them."""
    from collections import deque

    from celery import group
    from celery.result import AsyncResult

    queue, running = deque(todo), deque[list[AsyncResult]]()
    budget = len(todo) if stop_after is None else min(stop_after, len(todo))
    batches = rows = 0
    while (queue and budget) or running:
        while queue and budget and len(running) < inflight:
            chunk = [queue.popleft() for _ in range(min(window, len(queue), budget))]
            budget -= len(chunk)
            sigs = [app.signature(task, args=[payload(i)], options={"ignore_result": False}) for i in chunk]
            running.append(list(group(sigs).apply_async().results))
        head, deadline, seen = running[0], time.monotonic() + timeout, 0
        while seen < len(head):
            ready = sum(r.ready() for r in head)
            bar.update(ready - seen)
            seen = ready
            if seen < len(head):
                if time.monotonic() > deadline:
                    raise click.ClickException(f"batches not done after {timeout}s (run again to resume)")
                time.sleep(0.02)
        for r in head:
            if r.failed():
                raise click.ClickException(f"batch task {r.id} failed: {r.result!r} (run again to resume)")
            rows += int(r.result or 0)
            r.forget()
        batches += len(head)
        running.popleft()
    return batches, rows


# ---------------------------------------------------------------- one driver, two kinds


@dataclass(frozen=True)
class Command:
    """A kind of job as the CLI presents it; ``module`` holds its ``KIND`` (imported when the command runs)."""

    name: str
    module: str
    title: str  # in messages: "no unfinished <title>"
    unit: str  # what a batch task counts: <unit>_this_run, <unit>_per_s
    inflight: int  # groups in flight
    describe: Callable[[Any], dict[str, Any]]  # the job's own fields in the summary
    label: Callable[[Any], str]  # the progress bar's
    aborted: Callable[[Any], str]
    required: str | None = None  # the start option without which only --status and --abort make sense
    status: Callable[[Settings], dict[str, Any]] = lambda _: {}
    finishing: str = ""  # said before before_finalize runs here
    options: list[click.Option] = field(default_factory=list)  # what names the target

    def kind(self) -> JobKind[Any]:
        kind: JobKind[Any] = importlib.import_module(self.module).KIND
        return kind


def run(
    settings: Settings,
    app: Celery,
    cmd: Command,
    start: dict[str, Any],
    *,
    window: int,
    stop_after: int | None,
    timeout: float,
    progress: bool | None,
) -> dict[str, Any]:
    """The whole job from this process; returns the JSON summary (``status`` done, stopped, or why nothing was
    done). ``start``: the kind's start payload (its target and batch size)."""
    from pydantic import ValidationError

    from memos_pipeline.jobs.runner import JobBatch, JobConflict, JobStep, NothingToDo, NotReady

    kind, t0 = cmd.kind(), time.perf_counter()
    require_workers(app, settings, kind.queue)
    try:
        job, resumed = kind.start(settings, kind.start_model(**start))
    except NothingToDo as exc:
        return {"status": exc.status, "reason": str(exc)}
    except (ValueError, ValidationError, JobConflict) as exc:
        raise click.ClickException(str(exc)) from exc
    if resumed and job.batch_size != start["batch_size"]:
        click.echo(
            f"resuming job {job.job_id} with its own batch size {job.batch_size} (not {start['batch_size']})", err=True
        )
    step = JobStep(job_id=job.job_id).model_dump()
    began = call(app, kind.task("begin"), step, timeout)
    if began is None:
        raise click.ClickException(f"job {job.job_id} was replaced while starting; run again")
    job = kind.plan(settings, type(job)(**began))
    todo = kind.pending(settings, job)
    resumed_from = job.batches - len(todo)
    from tqdm import tqdm

    # Batches done on stderr (progress None: only on a terminal; False: never, for --json).
    off = True if progress is False else None
    with tqdm(
        total=job.batches, initial=resumed_from, desc=cmd.label(job), unit="batch", disable=off, file=sys.stderr
    ) as bar:
        batches, done = drive(
            app,
            kind.task("batch"),
            lambda i: JobBatch(job_id=job.job_id, batch=i).model_dump(),
            todo,
            window=window,
            stop_after=stop_after,
            timeout=timeout,
            bar=bar,
            inflight=cmd.inflight,
        )
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        **cmd.describe(job),
        "resumed": resumed,
        "resumed_from": resumed_from,
        "batches": job.batches,
        "batches_this_run": batches,
        f"{cmd.unit}_this_run": done,
        "batch_size": job.batch_size,
    }
    if len(todo) > batches:
        summary["status"] = "stopped"
    else:
        if kind.before_finalize is not None:
            if progress is not False:
                click.echo(f"{cmd.finishing}...", err=True)
            try:
                kind.before_finalize(settings, job.job_id)
            except NotReady as exc:
                raise click.ClickException(f"{exc} (run again to resume)") from exc
        summary.update(call(app, kind.task("finalize"), step, timeout))
    seconds = time.perf_counter() - t0
    summary.update({"seconds": round(seconds, 3), f"{cmd.unit}_per_s": round(done / seconds, 1) if seconds else None})
    return summary


def command(cmd: Command, help: str, batch_size: int, batch_help: str, window_help: str) -> click.Command:
    """The click command of a kind: its own options, then the ones every kind has."""

    def callback(
        batch_size: int,
        window: int | None,
        stop_after: int | None,
        timeout: float,
        show_status: bool,
        abort: bool,
        as_json: bool,
        **start: Any,
    ) -> None:
        from memos_pipeline.celery_app import make_celery
        from memos_pipeline.config import get_settings
        from memos_pipeline.jobs.runner import JobStep

        settings, kind = get_settings(), cmd.kind()
        cp = kind.checkpoint(settings)
        if show_status:
            job = cp.load()
            state: dict[str, Any] = dataclasses.asdict(job) if job else {"status": "none"}
            if job and not job.finished:
                state["batches_done"] = len(cp.done(job.job_id))
            state.pop("bounds", None)
            click.echo(json.dumps({**state, **cmd.status(settings)}, indent=2))
            return
        app = make_celery(settings)
        if abort:
            job = cp.load()
            if job is None or job.finished:
                click.echo(f"no unfinished {cmd.title}")
                return
            require_workers(app, settings, kind.queue)
            call(app, kind.task("abort"), JobStep(job_id=job.job_id).model_dump(), timeout)
            click.echo(f"aborted job {job.job_id}; {cmd.aborted(job)}")
            return
        if cmd.required and not start.get(cmd.required):
            raise click.UsageError(f"--{cmd.required} is required (or --status / --abort)")
        summary = run(
            settings,
            app,
            cmd,
            {**start, "batch_size": batch_size},
            window=window or kind.default_window(settings),
            stop_after=stop_after,
            timeout=timeout,
            progress=False if as_json else None,
        )
        click.echo(json.dumps(summary, indent=None if as_json else 2))
        if summary["status"] == "stopped":
            sys.exit(STOPPED)

    stop_help = f"Run at most N batches now, then stop (exit {STOPPED}); run again to continue."
    return click.Command(
        cmd.name,
        callback=callback,
        help=help,
        params=[
            *cmd.options,
            click.Option(
                ["--batch-size"],
                default=batch_size,
                show_default=True,
                type=click.IntRange(1, 100_000),
                help=batch_help,
            ),
            click.Option(["--window"], default=None, type=click.IntRange(1, 256), help=window_help),
            click.Option(["--stop-after"], default=None, type=click.IntRange(1), help=stop_help),
            click.Option(
                ["--timeout"], default=600.0, show_default=True, help="Seconds to wait for one group or step."
            ),
            click.Option(["--status", "show_status"], is_flag=True, help="Print the current or last job and exit."),
            click.Option(["--abort"], is_flag=True, help="Abandon the unfinished job and drop what it built."),
            click.Option(["--json", "as_json"], is_flag=True, help="Print only the JSON summary (no progress bar)."),
        ],
    )


def _models(settings: Settings) -> dict[str, Any]:
    from memos_pipeline.jobs import embedding_columns

    return {"models": embedding_columns.models(settings)}


REINDEX = Command(
    name="reindex",
    module="memos_pipeline.jobs.reindex",
    title="re-index",
    unit="docs",
    inflight=2,
    describe=lambda job: {"tenant_id": job.tenant_id, "generation": job.generation},
    label=lambda job: f"reindex gen {job.generation}",
    aborted=lambda job: f"generation {job.generation} dropped",
    options=[
        click.Option(
            ["--tenant"], default=None, help="Only this tenant (name or id); the others are copied as they are."
        )
    ],
)
REEMBED = Command(
    name="reembed",
    module="memos_pipeline.jobs.reembed",
    title="reembed",
    unit="rows",
    # One group in flight, not two as reindex: a batch takes seconds of the model, and a live add queued
    # behind the chunker's current batch should not also wait for the next one.
    inflight=1,
    describe=lambda job: {"model": job.spec, "version": job.version, "dims": job.dims, "reused": job.reused},
    label=lambda job: f"reembed v{job.version} ({job.dims} dims)",
    aborted=lambda job: f"the column of {job.spec} is dropped",
    required="model",
    status=_models,
    finishing="building the HNSW index on the new column",
    options=[
        click.Option(
            ["--model"],
            default=None,
            help="The new model: local (all-MiniLM-L6-v2), openai:<model>@<base_url>, or openai:<model> at "
            "MEMOS_EMBEDDER_BASE_URL. The previous model's vectors are kept until the next reembed, so "
            "re-embedding back to it only embeds what was written since.",
        ),
        click.Option(["--force"], is_flag=True, help="Recompute even if the model is already the active one."),
    ],
)

reindex = command(
    REINDEX,
    """Rebuild the BM25 index from Postgres into a new generation and swap it in atomically.

    Searches keep reading the current generation until the swap; adds arriving meanwhile reach both. Resumable:
    run it again after a crash or a kill and it continues from the last completed batch. Needs a running
    indexer worker. Prints a JSON summary (documents, rows in Postgres, generation, docs/s).
    """,
    2000,
    "Memories per batch task (a keyset page of ids); fixed when a job starts.",
    "Batch tasks per group (two groups in flight). Default: 1 with the embedded index (one writer: more would "
    "only queue ahead of live upserts), 4 with Elasticsearch (parallel indexers).",
)
reembed = command(
    REEMBED,
    """Recompute every embedding with another model and switch to it atomically.

    Searches keep using the current model until the swap; adds arriving meanwhile are caught up. Resumable: run
    it again after a crash or a kill and it continues from the last completed batch. Needs a running chunker
    worker. Prints a JSON summary (rows, model version, dimensions, rows/s).
    """,
    100,
    "Rows per batch task (a keyset page of ids); fixed when a job starts. A live add may wait for one batch: "
    "with the local model on two cores, 100 rows take seconds.",
    "Batch tasks per group (one group in flight). Default 1: one per chunker process; more would only queue "
    "ahead of live adds.",
)
