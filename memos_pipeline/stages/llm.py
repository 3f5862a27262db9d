"""The LLM stages of an ingest: MemReader (facts) and preference extraction, each followed by its adder.

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
from memos_pipeline.llm import LLMClient, Usage
from memos_pipeline.stages import prompts as ex
from memos_pipeline.storage import store
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Extraction, Memory, MemoryEdge, Preference
from memos_pipeline.text.chunking import Turn

log = logging.getLogger(__name__)

FACT_KEY_STRIDE = 1000  # natural key of a fact: batch * stride + position in the batch's output
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


def _batches(turns: list[Turn], size: int) -> list[list[Turn]]:
    return [turns[i : i + size] for i in range(0, len(turns), size)]


def _stored_or_extract(
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
    return output


def _embed_and_apply(
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


def _lock_user(s: Session, tenant_id: uuid.UUID, user_id: str) -> None:
    s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"{tenant_id}/{user_id}"})


def _decide(
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


# ------------------------------------------------------------------------------------------------ facts


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
        .limit(CANDIDATES)
    ).all()
    return [(m, 1.0 - float(d), m.memory_value) for m, d in rows]


def run_memreader(settings: Settings, embedder: Embedder, llm: LLMClient, ingest_id: uuid.UUID) -> StageResult | None:
    res = StageResult(usage=llm.usage)
    with session_scope(settings) as s:
        ingest = store.get_ingest(s, ingest_id)
        if ingest is None:
            return None
        store.mark_stage(s, ingest_id, "memreader", "running")
        s.commit()
        turns, _ = store.ingest_turns(s, ingest, 0)
        for b, batch in enumerate(_batches(turns, settings.extract_batch_messages)):

            def extract(batch: list[Turn] = batch, user_id: str = ingest.user_id) -> ex.FactsOut:
                return llm.chat_json(
                    ex.FACTS_SYSTEM,
                    ex.facts_prompt(batch, user_id),
                    ex.FactsOut,
                    check=lambda o: ex.check_facts(o, batch),
                )

            out = _stored_or_extract(s, ingest_id, "memreader", b, extract, llm.usage)
            facts = ex.FactsOut.model_validate(out).memories

            def apply(
                j: int, vec: np.ndarray, facts: list[ex.FactOut] = facts, b: int = b, batch: list[Turn] = batch
            ) -> None:
                _apply_fact(s, settings, embedder, llm, ingest, batch, b * FACT_KEY_STRIDE + j, facts[j], vec, res)

            _embed_and_apply(s, embedder, [f"{f.memory_key}: {f.memory_value}" for f in facts], apply, res)
    return res


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
    res: StageResult,
) -> None:
    exists = s.execute(
        select(Memory.id).where(Memory.ingest_id == ingest.id, Memory.kind == "fact", Memory.chunk_idx == key)
    ).first()
    if exists:
        return
    _lock_user(s, ingest.tenant_id, ingest.user_id)
    chash = store.content_hash(fact.memory_key, fact.memory_value)
    same = s.execute(
        select(Memory.id).where(
            Memory.tenant_id == ingest.tenant_id,
            Memory.user_id == ingest.user_id,
            Memory.kind == "fact",
            Memory.status == "activated",
            Memory.content_hash == chash,
        )
    ).first()
    if same:
        res.counts["duplicate"] += 1
        return
    cands = _fact_candidates(s, ingest.tenant_id, ingest.user_id, vec)
    decision = _decide(llm, settings.memory_adder_mode, settings.dedup_threshold, fact.memory_value, cands)
    res.counts[decision.action] += 1
    if decision.action == "duplicate":
        return
    sources = ex.map_sources(fact.sources, batch)
    by_source = {t.source_id: t.message_id for t in batch}
    row: dict[str, Any] = {
        "tenant_id": ingest.tenant_id,
        "user_id": ingest.user_id,
        "conversation_id": ingest.conversation_id,
        "ingest_id": ingest.id,
        "kind": "fact",
        "chunk_idx": key,
        "memory_key": fact.memory_key,
        "memory_value": fact.memory_value,
        "memory_type": fact.memory_type,
        "tags": fact.tags,
        "sources": sources,
        "source_message_ids": [uuid.UUID(by_source[x]) for x in sources],
        "embedding": vec.tolist(),
        "content_hash": chash,
        "info": {"extracted_by": llm.settings.llm_model},
    }
    old: Memory | None = None
    if decision.action in ("update", "conflict"):
        old = cands[ex.target_index(decision)][0]
        merged = decision.merged_value or fact.memory_value
        row.update(
            memory_value=merged,
            version=old.version + 1,
            embedding=embedder.embed([f"{fact.memory_key}: {merged}"])[0].tolist(),
            content_hash=store.content_hash(fact.memory_key, merged),
            info={**row["info"], "merged_from": str(old.id), "reason": decision.action},
        )
    new_id = s.execute(insert(Memory).values(**row).returning(Memory.id)).scalar_one()
    res.new_ids.append(new_id)
    if old is not None:
        old.status = "archived"
        old.updated_at = store.now()
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


# ------------------------------------------------------------------------------------------------ preferences


def run_preferences(settings: Settings, embedder: Embedder, llm: LLMClient, ingest_id: uuid.UUID) -> StageResult | None:
    res = StageResult(usage=llm.usage)
    with session_scope(settings) as s:
        ingest = store.get_ingest(s, ingest_id)
        if ingest is None:
            return None
        store.mark_stage(s, ingest_id, "preference", "running")
        s.commit()
        turns, _ = store.ingest_turns(s, ingest, 0)
        for b, batch in enumerate(_batches(turns, settings.extract_batch_messages)):

            def extract(batch: list[Turn] = batch) -> ex.PreferencesOut:
                return llm.chat_json(
                    ex.PREFERENCES_SYSTEM,
                    ex.render_for_llm(batch),
                    ex.PreferencesOut,
                    check=lambda o: ex.check_preferences(o, batch),
                )

            out = ex.PreferencesOut.model_validate(
                _stored_or_extract(s, ingest_id, "preference", b, extract, llm.usage)
            )
            items = [(p.preference, "explicit_preference", "", p.sources) for p in out.explicit_preferences]
            items += [(p.preference, "implicit_preference", p.reasoning, p.sources) for p in out.implicit_preferences]

            def apply(
                j: int, vec: np.ndarray, items: list[tuple[str, str, str, list[str]]] = items, batch: list[Turn] = batch
            ) -> None:
                pref, ptype, reasoning, refs = items[j]
                _apply_preference(s, settings, llm, ingest, batch, pref, ptype, reasoning, refs, vec, res)

            _embed_and_apply(s, embedder, [i[0] for i in items], apply, res)
    return res


def _apply_preference(
    s: Session,
    settings: Settings,
    llm: LLMClient,
    ingest: Any,
    batch: list[Turn],
    pref: str,
    ptype: str,
    reasoning: str,
    refs: list[str],
    vec: np.ndarray,
    res: StageResult,
) -> None:
    _lock_user(s, ingest.tenant_id, ingest.user_id)
    chash = store.content_hash(ptype, pref)
    scope = (Preference.tenant_id == ingest.tenant_id, Preference.user_id == ingest.user_id)
    if s.execute(select(Preference.id).where(*scope, Preference.content_hash == chash)).first():
        res.counts["duplicate"] += 1  # also what a redelivered task sees for what it already wrote
        return
    distance = Preference.embedding.cosine_distance(vec.tolist())
    rows = s.execute(
        select(Preference, distance)
        .where(*scope, Preference.status == "activated", Preference.preference_type == ptype)
        .order_by(distance)
        .limit(CANDIDATES)
    ).all()
    cands = [(p, 1.0 - float(d), p.preference) for p, d in rows]
    decision = _decide(llm, settings.preference_adder_mode, settings.dedup_threshold, pref, cands)
    res.counts[decision.action] += 1
    if decision.action == "duplicate":
        return
    if decision.action in ("update", "conflict"):
        old = cands[ex.target_index(decision)][0]
        old.status = "archived"
        old.updated_at = store.now()
        pref = decision.merged_value or pref
        chash = store.content_hash(ptype, pref)
    new_id = s.execute(
        insert(Preference)
        .values(
            tenant_id=ingest.tenant_id,
            user_id=ingest.user_id,
            conversation_id=ingest.conversation_id,
            ingest_id=ingest.id,
            preference=pref,
            preference_type=ptype,
            reasoning=reasoning,
            sources=ex.map_sources(refs, batch),
            embedding=vec.tolist(),
            content_hash=chash,
        )
        .on_conflict_do_nothing(constraint="uq_preferences_hash")
        .returning(Preference.id)
    ).scalar_one_or_none()
    if new_id is not None:
        res.new_ids.append(new_id)


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
        store.mark_stage(
            s,
            ingest_id,
            stage,
            "done",
            counts=res.counts,
            usage=usage,
            work_ms=round((time.perf_counter() - t0) * 1000, 2),
            attempt_usage=res.usage.as_dict(),
        )
