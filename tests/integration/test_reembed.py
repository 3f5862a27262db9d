"""Re-embedding on real services: ``memos-pipeline reembed`` to another model, killed half-way and resumed, searches
throughout, then back to the local model through the ``memos.chunker.reembed_all`` task.

The "other model" is an OpenAI-compatible endpoint (fakes/embedder.py, a separate process): 256 dimensions
where MiniLM has 384, so a vector of the wrong model cannot go unnoticed. The session's database is shared by all
tests: the module leaves the local model active (the last test restores it; a finalizer makes sure).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from celery import Celery
from flask.testing import FlaskClient
from helpers import wait_for
from sqlalchemy import select, text

from cli.stack import settings_env
from evaluation.job_bench import insert_memories
from fakes.embedder import FakeEmbedder
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.embedders import ACTIVE_MODEL_TTL_S, Embedder, FollowingEmbedder, OpenAIEmbedder, read_active
from memos_pipeline.ingest import lifecycle
from memos_pipeline.jobs import embedding_columns, reembed
from memos_pipeline.schemas import AddRequest
from memos_pipeline.stages import chunk as pipeline
from memos_pipeline.storage import db, ingests
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest, Memory, Preference
from memos_pipeline.text.chunking import window_turns

pytestmark = pytest.mark.integration

T = TypeVar("T")
DIMS = 256
LOCAL = "local:all-MiniLM-L6-v2"
N = 1200
MARKER = "The zanzibar lighthouse keeper paints the lamp room every spring"
MARKER_QUERY = "zanzibar lighthouse keeper paints the lamp room"
# In the first keyset page, which the batches finish first: only the catch-up can embed a row written there later.
EARLY_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "reembed", "--json", *args]


@pytest.fixture(scope="module")
def fake_model() -> Iterator[str]:
    """The fake endpoint's model spec (5 ms per request: an endpoint's latency, so the job takes a while)."""
    with FakeEmbedder(dims=DIMS, delay_ms=5) as fake:
        yield fake.spec


@pytest.fixture(scope="module")
def celery_app(workers: Settings, fake_model: str) -> Iterator[Celery]:
    app = make_celery(workers)
    yield app
    _restore_local(workers)
    app.close()
    reembed.Checkpoint(workers).forget_all()


def _restore_local(settings: Settings) -> None:
    """Whatever a failed test left: the job aborted, the local model active again (later tests need it)."""
    cp = reembed.Checkpoint(settings)
    job = cp.load()
    if job is not None and not job.finished:
        reembed.abort(settings, job.job_id)
    if active(settings).spec != LOCAL:
        subprocess.run(
            cli("--model", "local"), env=settings_env(settings), capture_output=True, timeout=600, check=True
        )


def active(settings: Settings) -> Any:
    with session_scope(settings) as s:
        return read_active(s, settings)


def columns(settings: Settings) -> dict[tuple[str, str], int]:
    with session_scope(settings) as s:
        return embedding_columns.vector_columns(s)


def wrong_width(settings: Settings, dims: int) -> dict[str, int]:
    """Rows per table whose vector is missing or not ``dims`` wide (activated memories: what search reads)."""
    with session_scope(settings) as s:
        return {
            t: int(
                s.execute(
                    text(
                        f"SELECT count(*) FROM {t} WHERE status = 'activated' AND "
                        f"(embedding IS NULL OR vector_dims(embedding) <> {dims})"
                    )
                ).scalar_one()
            )
            for t in ("memories", "preferences")
        }


def vector_of(settings: Settings, memory_id: uuid.UUID) -> np.ndarray:
    with session_scope(settings) as s:
        return np.asarray(s.execute(select(Memory.embedding).where(Memory.id == memory_id)).scalar_one())


def raw_memories(settings: Settings, user_id: str, conversation_id: str) -> list[tuple[uuid.UUID, str, np.ndarray]]:
    with session_scope(settings) as s:
        rows = s.execute(
            select(Memory.id, Memory.memory_value, Memory.embedding).where(
                Memory.user_id == user_id, Memory.conversation_id == conversation_id, Memory.kind == "raw"
            )
        ).all()
    return [(r[0], r[1], np.asarray(r[2])) for r in rows]


def expected_vector(settings: Settings, model: Embedder, user_id: str, conversation_id: str) -> np.ndarray:
    """The first window's vector as the chunk stage makes it with ``model`` (MEMOS_WINDOW_VECTORS: the window's text
    embedded whole, or its turns embedded once and combined)."""
    with session_scope(settings) as s:
        ingest = s.execute(
            select(Ingest).where(Ingest.user_id == user_id, Ingest.conversation_id == conversation_id)
        ).scalar_one()
        turns, ctx = ingests.ingest_turns(s, ingest, settings.chunk_overlap)
    windows = window_turns(turns, size=settings.chunk_turns, overlap=settings.chunk_overlap, context=ctx)
    texts, combine = pipeline.embedding_plan(windows, settings.window_vectors)
    vectors = model.embed(texts)
    return (combine(vectors) if combine else vectors)[0]


def sync_add(client: FlaskClient, auth: dict[str, str], user_id: str, conversation_id: str, *texts: str) -> None:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    resp = client.post(
        "/add/message",
        headers=auth,
        json={"user_id": user_id, "conversation_id": conversation_id, "messages": msgs, "async_mode": "sync"},
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["data"]["status"] == "done"


def search(app: Celery, tenant_id: uuid.UUID, user_id: str, query: str) -> dict[str, Any]:
    """Dense recall through the search worker (the real path: the worker embeds the query with its model)."""
    job = {
        "v": 1,
        "tenant_id": str(tenant_id),
        "user_id": user_id,
        "query": query,
        "channels": ["dense"],
        "top_k": 5,
        "include_preference": True,
    }
    result = app.send_task("memos.search.fast", args=[job], ignore_result=False)
    try:
        out: dict[str, Any] = result.get(timeout=30)
        return out
    finally:
        result.forget()


class Searches(threading.Thread):
    """Search the whole time; every search must succeed and find the marker, whichever model is active."""

    def __init__(self, app: Celery, tenant_id: uuid.UUID, marker: uuid.UUID) -> None:
        super().__init__(daemon=True)
        self.app, self.tenant_id, self.marker = app, tenant_id, str(marker)
        self.failures: list[str] = []
        self.at: list[float] = []  # wall clock of each search that succeeded
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.time()
            try:
                out = search(self.app, self.tenant_id, "alice", MARKER_QUERY)
                if self.marker not in {m["id"] for m in out["memories"]}:
                    self.failures.append(f"marker missing at {t0}: {[m['memory_value'][:40] for m in out['memories']]}")
                else:
                    self.at.append(t0)
            except Exception as exc:
                self.failures.append(f"search at {t0}: {exc!r}")
            time.sleep(0.03)


def reembed_job(settings: Settings, *, batches_done: int = 0, status: str | None = None) -> reembed.Job | None:
    cp = reembed.Checkpoint(settings)
    job = cp.load()
    if job is None or job.bounds is None or (status is not None and job.status != status):
        return None
    return job if len(cp.done(job.job_id)) >= batches_done else None


def accept_only(settings: Settings, tenant_id: uuid.UUID, user_id: str, conversation_id: str, *texts: str) -> uuid.UUID:
    """An ingest no worker will chunk (its outbox row marked sent): the test chunks it in this process."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    req = AddRequest(user_id=user_id, conversation_id=conversation_id, messages=msgs)  # type: ignore[arg-type]
    with session_scope(settings) as s:
        accepted = ingests.accept_ingest(
            s,
            tenant_id,
            req,
            trace_id="t",
            task_name="memos.chunker.chunk",
            stages=lifecycle.initial_stages(llm=False, scheduler=False, preference=False),
        )
        ingests.mark_outbox_sent(s, accepted.outbox_id)
    return accepted.ingest_id


def test_reembed_killed_half_way_resumes_switches_every_process_and_rolls_back(
    workers: Settings, celery_app: Celery, fake_model: str, client: FlaskClient, tenant: tuple[uuid.UUID, str]
) -> None:
    settings, (tenant_id, key) = workers, tenant
    auth, env = {"Authorization": f"Token {key}"}, settings_env(workers)
    fake = OpenAIEmbedder("fake-bow", fake_model.split("@", 1)[1], None, dim=None)
    assert active(settings).spec == LOCAL
    # Through the pipeline (the chunker embeds with MiniLM), and straight into Postgres, as a restore leaves rows.
    sync_add(client, auth, "alice", "marker", MARKER, "Sounds like a peaceful job")
    sync_add(client, auth, "alice", "dogs", "We walk the dogs by the river every morning", "Lovely routine")
    ((marker, marker_text, marker_local),) = raw_memories(settings, "alice", "marker")
    insert_memories(settings, tenant_id, N)
    unit = np.zeros(384, dtype=np.float32)
    unit[3] = 1.0
    with session_scope(settings) as s:
        for pref in ("Alice prefers lighthouse tours in spring", "Alice likes quiet coastal towns"):
            s.add(
                Preference(
                    tenant_id=tenant_id,
                    user_id="alice",
                    conversation_id="marker",
                    preference=pref,
                    preference_type="explicit_preference",
                    embedding=unit.tolist(),
                    content_hash=db.content_hash(pref),
                )
            )
    stale = FollowingEmbedder(settings, ttl_s=3600)  # a process that read the active model before the swap
    assert stale.active().spec == LOCAL

    searches = Searches(celery_app, tenant_id, marker)
    searches.start()
    proc = subprocess.Popen(
        cli("--model", fake_model, "--batch-size", "50", "--window", "2"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        job = wait_for(lambda: reembed_job(settings, batches_done=8), "8 checkpointed batches", timeout=120)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert job.batches >= 25 and job.dims == DIMS and job.version is not None
    assert not reembed.Checkpoint(settings).load().finished  # type: ignore[union-attr]
    assert active(settings).spec == LOCAL  # not swapped: searches still use MiniLM on the 384-wide column
    cols = columns(settings)
    assert cols["memories", "embedding"] == 384 and cols["memories", "embedding_next"] == DIMS

    # While nobody drives the job: an add through the pipeline, and a row in a page the batches already did.
    sync_add(client, auth, "alice", "greyhound", "We adopted a greyhound named Biscuit from the shelter", "Cute")
    with session_scope(settings) as s:
        s.add(
            Memory(
                id=EARLY_ID,
                tenant_id=tenant_id,
                user_id="alice",
                conversation_id="early",
                kind="raw",
                memory_value="The tandem bicycle needs new brake pads",
                status="activated",
                embedding=unit.tolist(),
                content_hash="early",
            )
        )

    done = subprocess.run(
        cli("--model", fake_model, "--batch-size", "50", "--window", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "done" and summary["resumed"] is True, summary
    assert summary["job_id"] == job.job_id and summary["resumed_from"] >= 8
    assert summary["caught_up"] + summary["caught_up_in_lock"] >= 1  # at least EARLY_ID
    swapped_at = time.time()

    # Every process follows: the active model is the new one; every vector has its width and is its vector.
    now = active(settings)
    assert (now.spec, now.dims, now.version) == (fake_model, DIMS, job.version)
    assert wrong_width(settings, DIMS) == {"memories": 0, "preferences": 0}
    assert columns(settings)["memories", "embedding_prev"] == 384  # kept for a rollback
    for memory_id, value in ((marker, marker_text), (EARLY_ID, "The tandem bicycle needs new brake pads")):
        assert np.allclose(vector_of(settings, memory_id), fake.embed([value])[0], atol=1e-6)
    time.sleep(ACTIVE_MODEL_TTL_S + 1)  # searches go on, now embedded by the new model in the search worker
    out = search(celery_app, tenant_id, "alice", "greyhound Biscuit shelter")
    assert "Biscuit" in out["memories"][0]["memory_value"]  # written during the job, caught up, found
    prefs = search(celery_app, tenant_id, "alice", "lighthouse tours in spring")["preferences"]
    assert "lighthouse" in prefs[0]["preference"] and len(prefs) == 2

    # An add after the swap is embedded by the new model: by the worker, and by a writer whose cached model is
    # stale (its insert meets the new column, it re-reads the active model and embeds again).
    sync_add(client, auth, "alice", "orchids", "The orchid greenhouse in Seville opens at nine", "Noted")
    ingest = accept_only(settings, tenant_id, "alice", "stale", "My favourite tea is smoky lapsang souchong", "Ok")
    assert pipeline.chunk_ingest(settings, stale, ingest) is not None
    assert stale.active().version == job.version
    for conv in ("orchids", "stale"):
        (_, _, vec) = raw_memories(settings, "alice", conv)[0]
        assert vec.shape == (DIMS,) and np.allclose(vec, expected_vector(settings, fake, "alice", conv), atol=1e-6)

    # Back to the local model through the task a scheduler triggers: the previous vectors come back as they were,
    # only rows written since the swap need MiniLM.
    with session_scope(settings) as s:
        since_swap = sum(
            int(s.execute(text(f"SELECT count(*) FROM {t} WHERE embedding_prev IS NULL")).scalar_one())
            for t in ("memories", "preferences")
        )
    celery_app.send_task("memos.chunker.reembed_all", args=[{"v": 1, "model": "local", "batch_size": 200, "window": 2}])
    back = wait_for(
        lambda: reembed_job(settings, status="done") if active(settings).spec == LOCAL else None,
        "the swap back to the local model",
        timeout=300,
    )
    assert back.result is not None and back.result["model"] == LOCAL
    assert back.result["embedded"] == since_swap >= 2 and back.result["reused"] >= N + 4, back.result
    assert wrong_width(settings, 384) == {"memories": 0, "preferences": 0}
    assert np.array_equal(vector_of(settings, marker), marker_local)  # the very vector MiniLM gave it at first
    time.sleep(ACTIVE_MODEL_TTL_S + 1)
    searches.halt.set()
    searches.join(timeout=60)
    assert searches.failures == []
    during = [t for t in searches.at if t < swapped_at]
    after = [t for t in searches.at if t > swapped_at + ACTIVE_MODEL_TTL_S]
    assert len(during) >= 5 and len(after) >= 5, (len(during), len(after))


def test_stop_status_and_abort(workers: Settings, celery_app: Celery, fake_model: str) -> None:
    settings, env = workers, settings_env(workers)
    before = active(settings)
    again = subprocess.run(cli("--model", "local"), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "already_active", again.stderr[-3000:]
    stopped = subprocess.run(
        cli("--model", fake_model, "--batch-size", "100", "--stop-after", "1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert json.loads(stopped.stdout)["status"] == "stopped"
    status = subprocess.run(
        [sys.executable, "-m", "cli", "reembed", "--status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    state = json.loads(status.stdout)
    assert (state["status"], state["batches_done"], state["spec"]) == ("building", 1, fake_model)
    assert (state["models"][0]["model"], state["models"][0]["status"]) == (fake_model, "building")  # newest first
    assert columns(settings)["memories", "embedding_next"] == DIMS
    other_model = fake_model.replace("fake-bow", "fake-other")
    other = subprocess.run(
        cli("--model", other_model), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert other.returncode == 1 and "unfinished reembed" in other.stderr  # one job at a time
    aborted = subprocess.run(
        [sys.executable, "-m", "cli", "reembed", "--abort"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert aborted.returncode == 0 and "aborted job" in aborted.stdout, aborted.stderr[-3000:]
    assert ("memories", "embedding_next") not in columns(settings)
    assert active(settings) == before and reembed.Checkpoint(settings).load().status == "aborted"  # type: ignore[union-attr]
    assert wrong_width(settings, 384) == {"memories": 0, "preferences": 0}
