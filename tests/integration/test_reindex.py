"""Batch re-indexing on real services: ``memos-pipeline reindex`` killed half-way and resumed, searches throughout.

The memories are written straight to Postgres (as a restore or a migration would leave them: not in BM25), so
only a re-index can make them searchable, and the moment they appear is the swap.
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
from pathlib import Path
from typing import Any, TypeVar

import pytest
from celery import Celery
from helpers import insert_fact, wait_for
from sqlalchemy import func, select, update

from cli.stack import settings_env
from evaluation.job_bench import insert_memories
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.jobs import reindex
from memos_pipeline.storage import tenants
from memos_pipeline.storage.bm25 import Bm25Query, Generations
from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex, gen_path, read_pointer
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory
from memos_pipeline.text.tokenizer import tokenize

pytestmark = pytest.mark.integration

T = TypeVar("T")
N = 3000


@pytest.fixture(scope="module")
def celery_app(workers: Settings) -> Iterator[Celery]:
    app = make_celery(workers)
    yield app
    app.close()
    _forget_checkpoints(workers)


def _forget_checkpoints(settings: Settings) -> None:
    cp = reindex.Checkpoint(settings)
    for key in cp.r.scan_iter(f"{cp.key}*"):
        cp.r.delete(key)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "reindex", "--json", *args]


def rows_in_postgres(settings: Settings, tenant_id: uuid.UUID | None = None) -> int:
    conds = [Memory.status == "activated", Memory.kind.in_(reindex.KINDS)]
    if tenant_id is not None:
        conds.append(Memory.tenant_id == tenant_id)
    with session_scope(settings) as s:
        return int(s.execute(select(func.count()).select_from(Memory).where(*conds)).scalar_one())


def index_live(app: Celery, *memory_ids: uuid.UUID) -> None:
    """What the API does after an add/update/delete: memos.indexer.upsert on the indexer worker."""
    payload = json.loads(json.dumps({"v": 1, "memory_ids": [str(m) for m in memory_ids]}))
    result = app.send_task("memos.indexer.upsert", args=[payload], ignore_result=False)
    try:
        result.get(timeout=60)
    finally:
        result.forget()


def current_job(
    settings: Settings, *, batches_done: int = 0, tenant_id: uuid.UUID | None = None, status: str | None = None
) -> reindex.Job | None:
    """The checkpointed job once it matches (planned, enough batches done, scope, status), else None."""
    cp = reindex.Checkpoint(settings)
    job = cp.load()
    if job is None or job.bounds is None or (tenant_id is not None and job.tenant_id != str(tenant_id)):
        return None
    if (status is not None and job.status != status) or len(cp.done(job.job_id)) < batches_done:
        return None
    return job


def ids(index: TantivyIndex, tenant_id: uuid.UUID, user_id: str, text: str) -> set[str]:
    return {i for i, _ in index.search(Bm25Query(str(tenant_id), user_id, tuple(tokenize(text)), limit=50))}


class Searches(threading.Thread):
    """Search the whole time: BM25 through a reader (as the search worker holds it) and through the search worker
    itself. The marker, indexed before the job, must be found by every search; the corpus appears at the swap
    and must never disappear again."""

    def __init__(self, settings: Settings, app: Celery, tenant_id: uuid.UUID, marker: uuid.UUID) -> None:
        super().__init__(daemon=True)
        self.settings, self.app, self.tenant_id, self.marker = settings, app, tenant_id, str(marker)
        self.failures: list[str] = []
        self.corpus_seen: list[bool] = []
        self.worker_searches = 0
        self.halt = threading.Event()

    def run(self) -> None:
        reader = TantivyIndex(self.settings.bm25_dir, writer=False)
        i = 0
        while not self.halt.is_set():
            try:
                if self.marker not in ids(reader, self.tenant_id, "marker", "zanzibar lighthouse"):
                    self.failures.append(f"marker missing at search {i}")
                self.corpus_seen.append(bool(ids(reader, self.tenant_id, "user0", "flight trip dinner concert")))
                if i % 20 == 0:
                    self._worker_search()
            except Exception as exc:
                self.failures.append(f"search {i}: {exc!r}")
            i += 1
            time.sleep(0.005)

    def _worker_search(self) -> None:
        job = {
            "v": 1,
            "tenant_id": str(self.tenant_id),
            "user_id": "marker",
            "query": "zanzibar lighthouse",
            "channels": ["bm25"],
            "include_preference": False,
        }
        result = self.app.send_task("memos.search.fast", args=[job], ignore_result=False)
        try:
            out = result.get(timeout=30)
        finally:
            result.forget()
        self.worker_searches += 1
        if self.marker not in {m["id"] for m in out["memories"]}:
            self.failures.append("the search worker did not find the marker")


def test_reindex_killed_half_way_resumes_from_its_checkpoint(
    workers: Settings, celery_app: Celery, tenant: tuple[uuid.UUID, str]
) -> None:
    settings, (tenant_id, _) = workers, tenant
    cp = reindex.Checkpoint(settings)
    marker = insert_fact(settings, tenant_id, "marker", "the zanzibar lighthouse keeper", axis=7)
    index_live(celery_app, marker)
    corpus = insert_memories(settings, tenant_id, N, status_every=25)  # 1 in 25 archived: not to be indexed
    reader = TantivyIndex(settings.bm25_dir, writer=False)
    assert not ids(reader, tenant_id, "user0", "flight trip dinner concert")  # in Postgres only, so far
    before = read_pointer(settings.bm25_dir)

    searches = Searches(settings, celery_app, tenant_id, marker)
    searches.start()
    env = settings_env(settings)
    proc = subprocess.Popen(
        cli("--batch-size", "100", "--window", "2"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        job = wait_for(lambda: current_job(settings, batches_done=8), "8 checkpointed batches")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert job.batches >= 28 and not cp.load().finished  # type: ignore[union-attr]
    assert job.generation is not None
    assert read_pointer(settings.bm25_dir) == Generations(before.current, job.generation)  # not swapped

    # While nobody drives the job: a live add (dual-written), a live delete, and a row committed whose live
    # index task has not run (the catch-up must bring it in).
    added = insert_fact(settings, tenant_id, "user0", "the orchid greenhouse in seville", axis=7)
    index_live(celery_app, added)
    deleted = corpus[0]
    with session_scope(settings) as s:
        s.execute(update(Memory).where(Memory.id == deleted).values(status="deleted", updated_at=func.now()))
    index_live(celery_app, deleted)
    unindexed = insert_fact(settings, tenant_id, "user0", "a quokka selfie on rottnest island", axis=7)
    assert not ids(reader, tenant_id, "user0", "quokka")

    done = subprocess.run(
        cli("--batch-size", "100", "--window", "2"), env=env, capture_output=True, text=True, timeout=300, check=False
    )
    searches.halt.set()
    searches.join(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "done" and summary["resumed"] is True
    assert summary["job_id"] == job.job_id and summary["resumed_from"] >= 8
    # The job's own count check, on one Postgres snapshot. Rows of other tests' tenants may still be written after
    # that snapshot (late pipeline stages in this session's database), so the index is compared with Postgres
    # once the live indexer has caught up with them, and this test's tenant exactly.
    assert summary["docs"] == summary["pg_rows"]
    assert summary["caught_up"] >= 3

    deadline = time.monotonic() + 30
    while (counts := (reader.count(), rows_in_postgres(settings)))[0] != counts[1] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts[0] == counts[1], counts
    assert reader.count(str(tenant_id)) == rows_in_postgres(settings, tenant_id) == N - N // 25 + 2  # + marker, added
    assert str(added) in ids(reader, tenant_id, "user0", "orchid greenhouse")
    assert str(unindexed) in ids(reader, tenant_id, "user0", "quokka")
    assert str(deleted) not in ids(reader, tenant_id, "user0", "flight trip dinner concert")
    assert read_pointer(settings.bm25_dir) == Generations(job.generation, None)
    old = gen_path(settings.bm25_dir, before.current)
    assert not (old / "meta.json").exists()  # the old generation is gone
    assert cp.load().status == "done"  # type: ignore[union-attr]

    assert searches.failures == []
    assert searches.worker_searches > 0
    seen = searches.corpus_seen
    assert seen and seen[-1] and not seen[0]
    assert seen == sorted(seen)  # once the swap showed the corpus, no search ever lost it


def test_tenant_reindex_stops_after_n_batches_and_keeps_other_tenants(workers: Settings, celery_app: Celery) -> None:
    settings, name = workers, f"rx-tenant-{uuid.uuid4().hex[:8]}"
    with session_scope(settings) as s:
        tenant_id, _ = tenants.create_api_key(s, name)
        other, _ = tenants.create_api_key(s, f"rx-other-{uuid.uuid4().hex[:8]}")
    neighbour = insert_fact(settings, other, "marker", "the neighbour keeps bees", axis=7)
    index_live(celery_app, neighbour)
    insert_memories(settings, tenant_id, 500)
    env = settings_env(settings)

    first = subprocess.run(
        cli("--tenant", name, "--batch-size", "100", "--stop-after", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert first.returncode == 3, first.stderr[-3000:]
    stopped = json.loads(first.stdout)
    assert (stopped["status"], stopped["batches_this_run"], stopped["batches"]) == ("stopped", 2, 5)
    assert stopped["tenant_id"] == str(tenant_id)

    other_scope = subprocess.run(
        cli("--batch-size", "100"), env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert other_scope.returncode == 1 and "unfinished re-index" in other_scope.stderr  # one job at a time

    second = subprocess.run(
        cli("--tenant", str(tenant_id), "--batch-size", "100"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["resumed_from"] == 2 and summary["batches_this_run"] == 3
    assert summary["docs"] == summary["pg_rows"] == 500
    assert summary["copied"] >= 1  # the other tenants came over from the previous generation
    reader = TantivyIndex(settings.bm25_dir, writer=False)
    assert reader.count(str(tenant_id)) == 500
    assert str(neighbour) in ids(reader, other, "marker", "bees")


def test_status_and_abort(workers: Settings, celery_app: Celery) -> None:
    settings, env = workers, settings_env(workers)
    with session_scope(settings) as s:
        tenant_id, _ = tenants.create_api_key(s, f"rx-abort-{uuid.uuid4().hex[:8]}")
    insert_memories(settings, tenant_id, 120)
    current = read_pointer(settings.bm25_dir).current
    stopped = subprocess.run(
        cli("--tenant", str(tenant_id), "--batch-size", "50", "--stop-after", "1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    gen = json.loads(stopped.stdout)["generation"]
    status = subprocess.run(
        [sys.executable, "-m", "cli", "reindex", "--status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    state = json.loads(status.stdout)
    assert (state["status"], state["batches_done"], state["generation"]) == ("building", 1, gen)
    assert read_pointer(settings.bm25_dir) == Generations(current, gen)
    aborted = subprocess.run(
        [sys.executable, "-m", "cli", "reindex", "--abort"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert aborted.returncode == 0 and f"generation {gen} dropped" in aborted.stdout, aborted.stderr[-3000:]
    assert read_pointer(settings.bm25_dir) == Generations(current, None)
    assert not gen_path(settings.bm25_dir, gen).exists()
    assert reindex.Checkpoint(settings).load().status == "aborted"  # type: ignore[union-attr]


def test_reindex_all_task_runs_to_the_swap_on_its_own(workers: Settings, celery_app: Celery) -> None:
    """What beat (or another system) triggers: no client waits, the chords carry the job to the swap."""
    settings = workers
    with session_scope(settings) as s:
        tenant_id, _ = tenants.create_api_key(s, f"rx-beat-{uuid.uuid4().hex[:8]}")
    insert_memories(settings, tenant_id, 300)
    celery_app.send_task(
        "memos.indexer.reindex_all", args=[{"v": 1, "tenant": str(tenant_id), "batch_size": 40, "window": 2}]
    )
    job = wait_for(lambda: current_job(settings, tenant_id=tenant_id, status="done"), "the swap")
    assert job.result is not None
    assert job.result["docs"] == job.result["pg_rows"] == 300 and job.result["batches"] == 8
    assert TantivyIndex(settings.bm25_dir, writer=False).count(str(tenant_id)) == 300


# ---------------------------------------------------------------- in process: the steps, without workers


@pytest.fixture
def local(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Its own BM25 directory and checkpoint namespace; the indexer's steps run in this process."""
    cfg = settings.with_overrides(bm25_path=tmp_path / "bm25", queue_prefix=f"rxlocal{uuid.uuid4().hex[:8]}.")
    yield cfg
    _forget_checkpoints(cfg)


def _job(cfg: Settings, n: int, batch_size: int) -> tuple[uuid.UUID, reindex.Job]:
    with session_scope(cfg) as s:
        tenant_id, _ = tenants.create_api_key(s, f"rx-local-{uuid.uuid4().hex[:8]}")
    insert_memories(cfg, tenant_id, n)  # dated in the past: the catch-up pass (changes since the start) skips them
    job, resumed = reindex.start_or_resume(cfg, str(tenant_id), batch_size)
    assert not resumed
    return tenant_id, job


def test_indexer_restart_mid_build_then_finalize(local: Settings) -> None:
    tenant_id, job = _job(local, 250, 50)
    gens: Any = TantivyIndex(local.bm25_dir, writer=True)
    job = reindex.plan(local, reindex.begin(local, gens, job.job_id))  # type: ignore[arg-type]
    assert job.batches == 5
    for b in reindex.KIND.pending(local, job)[:2]:
        assert reindex.run_batch(local, gens, job.job_id, b) == 50
    del gens  # the worker dies: its writers go with it; the pointer says what was being built
    gens = TantivyIndex(local.bm25_dir, writer=True)
    assert gens.generations() == Generations(0, job.generation)
    assert reindex.begin(local, gens, job.job_id) is not None  # redelivered: idempotent
    with pytest.raises(reindex.NotReady):
        reindex.finalize(local, gens, job.job_id)
    for b in reindex.KIND.pending(local, job):
        reindex.run_batch(local, gens, job.job_id, b)
    result = reindex.finalize(local, gens, job.job_id)
    assert (result["docs"], result["pg_rows"], result["generation"], result["previous"]) == (250, 250, 1, 0)
    assert reindex.finalize(local, gens, job.job_id) == result  # a redelivered finalize changes nothing
    assert TantivyIndex(local.bm25_dir, writer=False).count(str(tenant_id)) == 250


def test_count_mismatch_refuses_the_swap(local: Settings) -> None:
    tenant_id, job = _job(local, 120, 50)
    gens = TantivyIndex(local.bm25_dir, writer=True)
    gens.upsert([])  # generation 0 exists and serves
    job = reindex.plan(local, reindex.begin(local, gens, job.job_id))  # type: ignore[arg-type]
    for b in reindex.KIND.pending(local, job):
        reindex.run_batch(local, gens, job.job_id, b)
    assert job.generation is not None
    with session_scope(local) as s:
        lost = s.execute(select(Memory.id).where(Memory.tenant_id == tenant_id).limit(1)).scalar_one()
    gens.generation(job.generation).delete([str(lost)])  # a write the new generation lost, of an old row
    with pytest.raises(reindex.CountMismatch, match="119 documents, Postgres 120"):
        reindex.finalize(local, gens, job.job_id)
    assert read_pointer(local.bm25_dir) == Generations(0, job.generation)  # no swap
    reindex.abort(local, gens, job.job_id)
    assert read_pointer(local.bm25_dir) == Generations(0, None)
    assert not gen_path(local.bm25_dir, job.generation).exists()
    assert reindex.Checkpoint(local).load().status == "aborted"  # type: ignore[union-attr]
