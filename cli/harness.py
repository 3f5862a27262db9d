"""Isolated stacks for the benchmarks and the tests: a database, queue prefix, API port and BM25 directory of their
own, so a run never mixes with a running ``up`` (whose indexer holds the BM25 writer lock) or with another run on
the same broker; started, waited for, and torn down, queues and exchanges included.

Three layers, each usable alone:

- ``own_database``: a fresh database on the embedded server (started if needed), dropped on exit;
- ``running``: a ``Stack`` (workers, relay, API) on given settings, ready on entry, stopped and its broker
  topology deleted on exit;
- ``isolated``: both, on settings of its own (prefix, port, BM25 directory, optionally a Postgres server of its
  own), plus a tenant's key and an ``ApiClient``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.client import ApiClient
from cli.stack import Stack
from memos_pipeline.config import Settings
from memos_pipeline.queues import queues_for
from memos_pipeline.storage import pgserver, tenants
from memos_pipeline.storage.db import get_engine, session_scope

# MEMOS_EVAL_VERBOSE=1 (or MEMOS_TEST_WORKER_LOGS=1) lets the workers' and the API's logs through to stderr, to
# find why a run fails; by default they are silenced.
VERBOSE = "1" in (os.environ.get("MEMOS_EVAL_VERBOSE"), os.environ.get("MEMOS_TEST_WORKER_LOGS"))


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a run's own stack, queues and database are removed, not orphaned."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def delete_topology(settings: Settings) -> None:
    """Remove the queues (with their messages) and exchanges of ``settings``' prefix from the broker, best effort:
    a run leaves nothing behind on a broker others share."""
    from memos_pipeline.celery_app import dead_letter_exchange, declared_queues, exchange, make_celery

    app = make_celery(settings)
    try:
        with app.connection_for_write() as conn:
            for name in [q.name for q in declared_queues(settings)]:
                with contextlib.suppress(Exception):  # already gone (the channel is closed by the error: reopen)
                    conn.default_channel.queue_delete(name)
                    continue
                conn.close()
                conn.connect()
            for ex in (exchange(settings), dead_letter_exchange(settings)):
                with contextlib.suppress(Exception):
                    conn.default_channel.exchange_delete(ex.name)
    except Exception as exc:
        print(f"could not delete the queues of {settings.queue_prefix!r}: {exc}", file=sys.stderr)
    finally:
        app.close()


def create_key(settings: Settings, tenant: str) -> tuple[uuid.UUID, str]:
    """An API key for ``tenant`` (created if new): (tenant id, key)."""
    with session_scope(settings) as s:
        return tenants.create_api_key(s, tenant, "memos-pipeline harness")


@contextmanager
def own_database(settings: Settings, name: str) -> Iterator[Settings]:
    """The settings pointed at a new database ``name`` on the embedded server, dropped on exit (the server is
    stopped again if this started it). With an external database (``MEMOS_DATABASE_URL``) the settings as given."""
    if not settings.embedded_db:
        yield settings
        return
    started = pgserver.start(settings)
    pgserver.ensure_database(settings, name)
    cfg = settings.with_overrides(database_url=f"postgresql://postgres@127.0.0.1:{settings.pg_port}/{name}")
    try:
        yield cfg
    finally:
        get_engine(cfg).dispose()
        pgserver.drop_database(settings, name)
        if started:
            pgserver.release(settings)


@contextmanager
def running(
    settings: Settings,
    queues: Iterable[str] = (),
    *,
    api: bool = False,
    relay: bool = False,
    delete_queues: bool = True,
    timeout: float = 180.0,
    stack_type: type[Stack] = Stack,
    **options: Any,
) -> Iterator[Stack]:
    """A started ``Stack`` (``options``: its other fields), ready on entry; on exit stopped (and the embedded
    database with it if the stack started it) and, unless ``delete_queues`` is False (workers added to someone
    else's queues), its queues deleted."""
    options.setdefault("quiet", not VERBOSE)
    stack = stack_type(settings, queues=tuple(queues), api=api, relay=relay, **options)
    try:
        stack.start()
        stack.wait_ready(timeout=timeout)
        yield stack
    finally:
        stack.stop()
        if delete_queues:
            delete_topology(settings)


@contextmanager
def api_server(settings: Settings, **options: Any) -> Iterator[Stack]:
    """Only the gunicorn API, exactly as ``up`` runs it, on a free port, beside the workers already running."""
    cfg = settings.with_overrides(api_port=free_port(settings.api_host))
    with running(cfg, api=True, delete_queues=False, **options) as stack:
        yield stack


@dataclass
class Isolated:
    settings: Settings
    stack: Stack
    tenant: str  # a new tenant's name (``<name>-<run>``)
    tenant_id: uuid.UUID
    api: ApiClient
    tmp: Path  # removed on exit
    run: str  # the run's id (in its prefix, database and tenant names)


@contextmanager
def tenant_of(h: Isolated, name: str) -> Iterator[Isolated]:
    """``h``, a stack several runs share (the tests' session stack), with a new tenant and client of its own."""
    tenant = f"{name}-{secrets.token_hex(3)}"
    tenant_id, key = create_key(h.settings, tenant)
    with ApiClient(h.stack.base_url, key) as client:
        yield dataclasses.replace(h, tenant=tenant, tenant_id=tenant_id, api=client)


@contextmanager
def isolated(
    settings: Settings,
    name: str,
    queues: Iterable[str] | None = None,
    *,
    api: bool = True,
    private_pg: bool = False,
    timeout: float = 180.0,
    **overrides: Any,
) -> Iterator[Isolated]:
    """The stack ``up`` runs (``queues``: by default the core ones, plus the LLM stages with an LLM) on a database,
    queue prefix, API port and BM25 directory of its own, with ``overrides`` on the settings, and a new tenant's
    client. ``private_pg``: with the embedded database, a Postgres server of its own too (on a free port), so that
    nobody else stopping the shared one stops the run. Everything it created is removed on exit."""
    run = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix=f"memos-{name}-{run}-"))
    base = settings.with_overrides(
        queue_prefix=f"{name}{run}.",
        api_port=free_port(settings.api_host),
        bm25_path=tmp / "bm25",
        **overrides,
    )
    if private_pg and base.embedded_db:
        tmp.chmod(0o755)  # the server's OS user (when we are root) keeps its data dir in here: removed with it
        base = base.with_overrides(home=tmp / "home", pg_port=free_port())
    try:
        with (
            own_database(base, f"memos_{name}_{run}") as cfg,
            running(
                cfg, queues_for(cfg.llm_enabled) if queues is None else queues, api=api, relay=True, timeout=timeout
            ) as stack,
        ):
            tenant_id, key = create_key(cfg, f"{name}-{run}")
            with ApiClient(stack.base_url, key) as client:
                yield Isolated(cfg, stack, f"{name}-{run}", tenant_id, client, tmp, run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
