"""The one table of queues: what runs on each, how its workers run, where their metrics are served.

Pure data, no Celery: the app factory (routes, declared queues), the stack runner (``up``, the harness), the
worker metrics and ``deploy/compose.yaml`` (checked by ``tests/unit/test_deploy.py``) all read it from here.
Task names are ``memos.<queue>.<action>`` and are routed by the queue part.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueSpec:
    name: str
    does: str
    # Celery pool and default concurrency of this queue's worker (0: as many as the cores). The chunker runs
    # threads, several ingests in flight, whose embedding calls coalesce into one model call (coalesce.py): a
    # batch across ingests without holding any message back. The indexer is the one BM25 writer: one task at a time,
    # on a pool thread so that its consumer keeps taking the next messages meanwhile, which the running upsert
    # indexes with its own in one BM25 commit (workers/indexer.py; the solo pool takes a message only when the
    # previous task is over, so there is never a next one to batch with). Search,
    # the LLM stages and the reranker wait on I/O or share the model the same way: threads.
    pool: str
    concurrency: int
    embeds: bool  # loads the embedding model when the worker starts (warm before its first task)
    core: bool  # started by `up` and the harness whether or not an LLM is configured
    # CPU niceness of this queue's worker. The stages that embed in bulk are throughput work: niced, they still get
    # every idle cycle, but an add's 202, a BM25 upsert (time to searchable) and a search no longer queue behind a
    # batch of window embeddings for the core (CFS gives a nice-0 task ~10x the share of a nice-10 one).
    nice: int = 0
    # Messages a worker holds per concurrency slot (Celery's prefetch multiplier; each is acked only when its task is
    # done, so a crash redelivers all of them). The indexer fetching one at a time sat idle in its event loop
    # 57% of a flood's drain with 180 upserts queued (py-spy); holding 16 it stays busy and keeps up.
    prefetch: int = 1

    @property
    def metrics_offset(self) -> int:
        """Port offset of this queue's worker metrics (MEMOS_WORKER_METRICS_PORT + offset)."""
        return list(QUEUES).index(self.name)


QUEUES: dict[str, QueueSpec] = {
    q.name: q
    for q in (
        QueueSpec(
            "chunker", "window messages, embed, write raw memories", "threads", 8, embeds=True, core=True, nice=10
        ),
        QueueSpec("memreader", "LLM fact extraction, merge/dedup", "threads", 4, embeds=True, core=False, nice=10),
        QueueSpec(
            "preference", "explicit/implicit preference extraction", "threads", 4, embeds=True, core=False, nice=10
        ),
        QueueSpec(
            "indexer", "BM25 upserts/deletes, graph edges, re-index", "threads", 1, embeds=False, core=True, prefetch=16
        ),
        QueueSpec("search", "fast recall and fusion", "threads", 4, embeds=True, core=True),
        QueueSpec("reranker", "rerank candidates", "threads", 4, embeds=False, core=True),
    )
}
DEAD_LETTER = "dead_letter"
# The reranker worker is always up: any search request may ask for mode fine or mixture.
CORE_QUEUES = tuple(q.name for q in QUEUES.values() if q.core)
LLM_QUEUES = tuple(q.name for q in QUEUES.values() if not q.core)
EMBEDDING_QUEUES = tuple(q.name for q in QUEUES.values() if q.embeds)


def queues_for(llm_enabled: bool) -> list[str]:
    """The queues a full stack runs: the core ones, and the LLM stages when an LLM is configured."""
    return [*CORE_QUEUES, *LLM_QUEUES] if llm_enabled else list(CORE_QUEUES)


def queue_of(task_name: str) -> str:
    """The queue a task runs on (``memos.<queue>.<action>``), or "other"."""
    parts = task_name.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "memos" and parts[1] in QUEUES else "other"
