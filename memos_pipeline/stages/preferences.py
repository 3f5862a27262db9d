"""The preference stage: explicit and implicit preferences from an ingest's turns, each checked against the user's
preferences by the adder (fast: similarity; fine: the LLM decides). See ``stages.llm`` for idempotency.
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
from memos_pipeline.stages import prompts as ex
from memos_pipeline.storage import db
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Preference
from memos_pipeline.text.chunking import Turn

log = logging.getLogger(__name__)


def run_preferences(
    settings: Settings, embedder: Embedder, llm: LLMClient, ingest_id: uuid.UUID
) -> llm_stage.StageResult | None:
    res = llm_stage.StageResult(usage=llm.usage)
    with session_scope(settings) as s:
        opened = llm_stage.open_stage(s, settings, ingest_id, "preference")
        if opened is None:
            return None
        ingest, todo = opened
        for b, batch in enumerate(todo):

            def extract(batch: list[Turn] = batch) -> ex.PreferencesOut:
                return llm.chat_json(
                    ex.PREFERENCES_SYSTEM,
                    ex.render_for_llm(batch),
                    ex.PreferencesOut,
                    check=lambda o: ex.check_preferences(o, batch),
                )

            out = ex.PreferencesOut.model_validate(
                llm_stage.stored_or_extract(s, ingest_id, "preference", b, extract, llm.usage)
            )
            items = [(p.preference, "explicit_preference", "", p.sources) for p in out.explicit_preferences]
            items += [(p.preference, "implicit_preference", p.reasoning, p.sources) for p in out.implicit_preferences]

            def apply(
                j: int, vec: np.ndarray, items: list[tuple[str, str, str, list[str]]] = items, batch: list[Turn] = batch
            ) -> None:
                pref, ptype, reasoning, refs = items[j]
                _apply_preference(s, settings, llm, ingest, batch, pref, ptype, reasoning, refs, vec, res)

            llm_stage.embed_and_apply(s, embedder, [i[0] for i in items], apply, res)
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
    res: llm_stage.StageResult,
) -> None:
    llm_stage.lock_user(s, ingest.tenant_id, ingest.user_id)
    chash = db.content_hash(ptype, pref)
    scope = (Preference.tenant_id == ingest.tenant_id, Preference.user_id == ingest.user_id)
    if s.execute(select(Preference.id).where(*scope, Preference.content_hash == chash)).first():
        res.counts["duplicate"] += 1  # also what a redelivered task sees for what it already wrote
        return
    distance = Preference.embedding.cosine_distance(vec.tolist())
    rows = s.execute(
        select(Preference, distance)
        .where(*scope, Preference.status == "activated", Preference.preference_type == ptype)
        .order_by(distance)
        .limit(llm_stage.CANDIDATES)
    ).all()
    cands = [(p, 1.0 - float(d), p.preference) for p, d in rows]
    decision = llm_stage.decide(llm, settings.preference_adder_mode, settings.dedup_threshold, pref, cands)
    res.counts[decision.action] += 1
    if decision.action == "duplicate":
        return
    if decision.action in ("update", "conflict"):
        old = cands[ex.target_index(decision)][0]
        old.status = "archived"
        old.updated_at = db.now()
        pref = decision.merged_value or pref
        chash = db.content_hash(ptype, pref)
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
