"""What the two LLM stages (facts: ``stages.facts``, preferences: ``stages.preferences``) share: running a stage
for one ingest (skip finished work, fail on unusable model output, record usage and timings), batching, the stored
extraction that a retry replays, and the adder's decision new / duplicate / update / conflict.


Idempotent in three steps, so a redelivered task (worker killed, LLM down for an hour) converges:
1. the model's validated output per batch is stored in ``extractions`` before anything is written from it, and
   replayed on a retry instead of asking the model again;
2. each fact has the natural key (ingest, "fact", batch * 1000 + index): one already written is skipped;
3. the adder runs under a per-user advisory lock, so two ingests of one user cannot both add the same new fact.
Updates never overwrite: a new version is written, the old one archived, a ``merged_from`` edge links them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline import embedders
from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.llm import LLMClient, LLMOutputError, Usage
from memos_pipeline.stages import prompts as ex
from memos_pipeline.storage import db, ingests
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Extraction, Memory
from memos_pipeline.text.chunking import Turn

log = logging.getLogger(__name__)

CANDIDATES = 5


FINE_MIN_SIMILARITY = 0.5  # below this no existing memory is a plausible match: "new" without asking the LLM


@dataclass
class StageResult:
    new_ids: list[uuid.UUID] = field(default_factory=list)
    archived_ids: list[uuid.UUID] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"new": 0, "duplicate": 0, "update": 0, "conflict": 0})
    usage: Usage = field(default_factory=Usage)

    def mark(self) -> tuple[dict[str, int], int, int]:
        return dict(self.counts), len(self.new_ids), len(self.archived_ids)

    def reset(self, mark: tuple[dict[str, int], int, int]) -> None:
        """Forget what an item rolled back had counted."""
        self.counts, new, archived = dict(mark[0]), mark[1], mark[2]
        del self.new_ids[new:], self.archived_ids[archived:]


def batches(turns: list[Turn], size: int) -> list[list[Turn]]:
    return [turns[i : i + size] for i in range(0, len(turns), size)]


def open_stage(s: Session, settings: Settings, ingest_id: uuid.UUID, stage: str) -> tuple[Any, list[list[Turn]]] | None:
    """Start ``stage`` on one ingest in session ``s``: marked running (committed at once, so /get/status shows it
    while the model works), and the ingest's turns in LLM-sized batches. None when the ingest is gone."""
    ingest = ingests.get_ingest(s, ingest_id)
    if ingest is None:
        return None
    lifecycle.mark_stage(s, ingest_id, stage, "running")
    s.commit()
    turns, _ = ingests.ingest_turns(s, ingest, 0)
    return ingest, batches(turns, settings.extract_batch_messages)


def stored_or_extract(
    s: Session, ingest_id: uuid.UUID, stage: str, b: int, extract: Callable[[], Any], usage: Usage
) -> dict[str, Any]:
    """Step 1: the batch's stored output, or a fresh extraction stored first."""
    row = s.execute(
        select(Extraction.output).where(
            Extraction.ingest_id == ingest_id, Extraction.stage == stage, Extraction.batch_idx == b
        )
    ).scalar_one_or_none()
    if row is not None:
        return row
    s.commit()  # no transaction stays open while the model thinks
    before = Usage(**usage.as_dict())
    output = extract().model_dump()
    spent = {k: v - getattr(before, k) for k, v in usage.as_dict().items()}
    s.execute(
        insert(Extraction)
        .values(ingest_id=ingest_id, stage=stage, batch_idx=b, output=output, usage=spent)
        .on_conflict_do_nothing(constraint="uq_extractions_ingest_stage_batch")
    )
    s.commit()  # the output is durable before any memory is written from it
    # Read back what is stored: a run of the same batch at the same time (a redelivery while this one worked) may
    # have stored its own answer first, and every run must apply that one answer.
    stored: dict[str, Any] = s.execute(
        select(Extraction.output).where(
            Extraction.ingest_id == ingest_id, Extraction.stage == stage, Extraction.batch_idx == b
        )
    ).scalar_one()
    return stored


def embed_and_apply(
    s: Session, embedder: Embedder, texts: list[str], apply: Callable[[int, np.ndarray], None], res: StageResult
) -> None:
    """Embed ``texts`` with the active model and ``apply(i, vector)`` each, one transaction per item (a crash keeps
    what was applied). If a reembed swaps the model meanwhile, the item is rolled back and the remaining ones are
    embedded again with the new model: no vector of a model that is no longer active is ever stored."""
    done = 0
    for attempt in range(1, embedders.SWITCH_ATTEMPTS + 1):
        version, vecs = embedders.embed_active(embedder, texts[done:])
        for vec in vecs:
            mark = res.mark()
            try:
                apply(done, vec)
                embedders.require_active(s, version)
                s.commit()
            except Exception as exc:
                s.rollback()
                res.reset(mark)
                if attempt == embedders.SWITCH_ATTEMPTS or not embedders.model_switched(exc):
                    raise
                log.info("embedding model switched during a stage (%s); embedding again", exc)
                embedders.refresh(embedder)
                break
            done += 1
        else:
            return


def lock_user(s: Session, tenant_id: uuid.UUID, user_id: str) -> None:
    s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"{tenant_id}/{user_id}"})


def known_fact(s: Session, ingest: Any, memory_key: str, memory_value: str) -> tuple[str, bool]:
    """Under the user's lock (held to the end of the transaction): the fact's content hash, and whether an activated
    fact of the user already says exactly this (a repeat, or what a redelivery finds for a fact it added before)."""
    lock_user(s, ingest.tenant_id, ingest.user_id)
    chash = db.content_hash(memory_key, memory_value)
    same = s.execute(
        select(Memory.id).where(
            Memory.tenant_id == ingest.tenant_id,
            Memory.user_id == ingest.user_id,
            Memory.kind == "fact",
            Memory.status == "activated",
            Memory.content_hash == chash,
        )
    ).first()
    return chash, same is not None


def fact_row(ingest: Any, idx: int, fact: Any, vec: np.ndarray, chash: str, **fields: Any) -> dict[str, Any]:
    """A new fact of the ingest (``fact``: memory_key, memory_value, memory_type, tags), at natural key ``idx``;
    ``fields`` (sources, source_message_ids, info) as the stage knows them."""
    return {
        "tenant_id": ingest.tenant_id,
        "user_id": ingest.user_id,
        "conversation_id": ingest.conversation_id,
        "ingest_id": ingest.id,
        "kind": "fact",
        "chunk_idx": idx,
        "memory_key": fact.memory_key,
        "memory_value": fact.memory_value,
        "memory_type": fact.memory_type,
        "tags": fact.tags,
        "embedding": vec.tolist(),
        "content_hash": chash,
        **fields,
    }


def decide(
    llm: LLMClient | None, mode: str, threshold: float, value: str, candidates: Sequence[tuple[Any, float, str]]
) -> ex.MergeDecision:
    """candidates: (row, similarity, value) best first."""
    if not candidates:
        return ex.MergeDecision(action="new")
    if mode == "fast" or llm is None:
        return (
            ex.MergeDecision(action="duplicate", target="e0")
            if candidates[0][1] >= threshold
            else ex.MergeDecision(action="new")
        )
    if candidates[0][1] < FINE_MIN_SIMILARITY:
        return ex.MergeDecision(action="new")
    values = [c[2] for c in candidates]
    return llm.chat_json(
        ex.MERGE_SYSTEM,
        ex.merge_prompt(value, values),
        ex.MergeDecision,
        check=lambda d: ex.check_merge(d, len(values)),
    )


def stage_usage(s: Session, ingest_id: uuid.UUID, stage: str) -> dict[str, int]:
    """LLM usage of a stage summed over its stored batches (calls made by earlier attempts included)."""
    rows = s.execute(
        select(Extraction.usage).where(Extraction.ingest_id == ingest_id, Extraction.stage == stage)
    ).scalars()
    total: dict[str, int] = {}
    for u in rows:
        for k, v in (u or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def finish_stage(settings: Settings, ingest_id: uuid.UUID, stage: str, res: StageResult, t0: float) -> None:
    with session_scope(settings) as s:
        usage = stage_usage(s, ingest_id, stage)
        # usage: extraction calls over all attempts (stored per batch); attempt_usage: this attempt's calls,
        # including the fine adder's merge decisions and retries.
        lifecycle.mark_stage(
            s,
            ingest_id,
            stage,
            "done",
            counts=res.counts,
            usage=usage,
            work_ms=round((time.perf_counter() - t0) * 1000, 2),
            attempt_usage=res.usage.as_dict(),
        )


Runner = Callable[[Settings, Embedder, LLMClient, uuid.UUID], StageResult | None]


def run_stage(
    settings: Settings, stage: str, ingest_id: uuid.UUID, runner: Runner, embedder: Embedder, llm: LLMClient
) -> StageResult | None:
    """Run one LLM stage of one ingest to its end. None when there was nothing to do (vanished, finished, or
    failed for good on unusable model output: the stage says why, the raw memories stay searchable)."""
    with session_scope(settings) as s:
        ingest = ingests.get_ingest(s, ingest_id)
        if ingest is None or ingest.stages.get(stage, {}).get("status") in ("done", "skipped"):
            return None  # vanished, or a redelivery of finished work
    t0 = time.perf_counter()
    try:
        res = runner(settings, embedder, llm, ingest_id)
    except LLMOutputError as exc:
        # Retrying cannot fix a model that answers wrongly twice: fail the stage, keep the raw memories.
        with session_scope(settings) as s:
            lifecycle.mark_stage(s, ingest_id, stage, "failed", error=str(exc)[:1000])
        return None
    if res is not None:
        finish_stage(settings, ingest_id, stage, res, t0)
    return res
