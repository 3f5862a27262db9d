"""The facts stage (MemReader): the LLM extracts facts from an ingest's turns in batches; the adder merges each
with the user's facts (new, duplicate, update as a new version, conflict). See ``stages.llm`` for what makes it
idempotent.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.llm import LLMClient
from memos_pipeline.stages import llm_stage
from memos_pipeline.stages import profile as profile_stage
from memos_pipeline.stages import prompts as ex
from memos_pipeline.storage import db
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory, MemoryEdge
from memos_pipeline.text.chunking import Turn

log = logging.getLogger(__name__)

FACT_KEY_STRIDE = 1000  # natural key of a fact: batch * stride + position in the batch's output


def run_memreader(
    settings: Settings, embedder: Embedder, llm: LLMClient, ingest_id: uuid.UUID
) -> llm_stage.StageResult | None:
    res = llm_stage.StageResult(usage=llm.usage)
    with session_scope(settings) as s:
        opened = llm_stage.open_stage(s, settings, ingest_id, "memreader")
        if opened is None:
            return None
        ingest, todo = opened
        for b, batch in enumerate(todo):

            def extract(batch: list[Turn] = batch, user_id: str = ingest.user_id) -> ex.FactsOut:
                return llm.chat_json(
                    ex.FACTS_SYSTEM,
                    ex.facts_prompt(batch, user_id),
                    ex.FactsOut,
                    check=lambda o: ex.check_facts(o, batch),
                )

            out = llm_stage.stored_or_extract(s, ingest_id, "memreader", b, extract, llm.usage)
            facts = ex.FactsOut.model_validate(out).memories

            def apply(
                j: int, vec: np.ndarray, facts: list[ex.FactOut] = facts, b: int = b, batch: list[Turn] = batch
            ) -> None:
                _apply_fact(s, settings, embedder, llm, ingest, batch, b * FACT_KEY_STRIDE + j, facts[j], vec, res)

            llm_stage.embed_and_apply(s, embedder, [f"{f.memory_key}: {f.memory_value}" for f in facts], apply, res)
        # The user's profile follows the facts just written (stages/profile.py: the model, or the rules).
        profile_stage.update_profile(s, llm, ingest, llm.usage)
    return res


def _fact_candidates(
    s: Session, tenant_id: uuid.UUID, user_id: str, vec: np.ndarray
) -> list[tuple[Memory, float, str]]:
    distance = Memory.embedding.cosine_distance(vec.tolist())
    rows = s.execute(
        select(Memory, distance)
        .where(
            Memory.tenant_id == tenant_id,
            Memory.user_id == user_id,
            Memory.kind == "fact",
            Memory.status == "activated",
        )
        .order_by(distance)
        .limit(llm_stage.CANDIDATES)
    ).all()
    return [(m, 1.0 - float(d), m.memory_value) for m, d in rows]


def _apply_fact(
    s: Session,
    settings: Settings,
    embedder: Embedder,
    llm: LLMClient,
    ingest: Any,
    batch: list[Turn],
    key: int,
    fact: ex.FactOut,
    vec: np.ndarray,
    res: llm_stage.StageResult,
) -> None:
    exists = s.execute(
        select(Memory.id).where(Memory.ingest_id == ingest.id, Memory.kind == "fact", Memory.chunk_idx == key)
    ).first()
    if exists:
        return
    chash, known = llm_stage.known_fact(s, ingest, fact.memory_key, fact.memory_value)
    if known:
        res.counts["duplicate"] += 1
        return
    cands = _fact_candidates(s, ingest.tenant_id, ingest.user_id, vec)
    decision = llm_stage.decide(llm, settings.memory_adder_mode, settings.dedup_threshold, fact.memory_value, cands)
    res.counts[decision.action] += 1
    if decision.action == "duplicate":
        return
    sources = ex.map_sources(fact.sources, batch)
    by_source = {t.source_id: t.message_id for t in batch}
    row = llm_stage.fact_row(
        ingest,
        key,
        fact,
        vec,
        chash,
        sources=sources,
        source_message_ids=[uuid.UUID(by_source[x]) for x in sources],
        info={"extracted_by": llm.settings.llm_model},
    )
    old: Memory | None = None
    if decision.action in ("update", "conflict"):
        old = cands[ex.target_index(decision)][0]
        merged = decision.merged_value or fact.memory_value
        row.update(
            memory_value=merged,
            version=old.version + 1,
            embedding=embedder.embed([f"{fact.memory_key}: {merged}"])[0].tolist(),
            content_hash=db.content_hash(fact.memory_key, merged),
            info={**row["info"], "merged_from": str(old.id), "reason": decision.action},
        )
    new_id = s.execute(insert(Memory).values(**row).returning(Memory.id)).scalar_one()
    res.new_ids.append(new_id)
    if old is not None:
        old.status = "archived"
        old.updated_at = db.now()
        res.archived_ids.append(old.id)
        s.add(MemoryEdge(tenant_id=ingest.tenant_id, src_id=new_id, dst_id=old.id, kind="merged_from"))
    # derived_from: the fact points back at the raw windows that hold its source messages (raw-text retrieval).
    raw_ids = s.execute(
        select(Memory.id).where(
            Memory.ingest_id == ingest.id,
            Memory.kind == "raw",
            Memory.source_message_ids.overlap(row["source_message_ids"]),
        )
    ).scalars()
    for rid in raw_ids:
        s.execute(
            insert(MemoryEdge)
            .values(tenant_id=ingest.tenant_id, src_id=new_id, dst_id=rid, kind="derived_from")
            .on_conflict_do_nothing(constraint="uq_memory_edges_src_dst_kind")
        )
