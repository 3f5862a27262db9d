"""The feedback stage (``memos.memreader.feedback``): the LLM is shown a user's feedback and the user's facts the
search finds for it, and answers which facts to add, which to update and which to archive.

Nothing is overwritten: an update is a new version through ``storage.memories.new_version`` (the old one
archived, a ``merged_from`` edge between them), an archive retires the fact (``storage.memories.retire``, audited).

Idempotent as the other LLM stages (``stages.llm_stage``): the candidates the model saw and its validated answer
are stored in ``extractions`` before anything is applied, and a redelivered task replays them instead of asking
again (a new search could see other candidates, and ``e0`` would then name another fact). Each change is applied
in its own transaction and skipped when already applied: an added fact has the natural key (feedback ingest,
position), and a fact to update or archive that is no longer active was handled already (or meanwhile replaced).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.config import Settings
from memos_pipeline.embedders import Embedder
from memos_pipeline.ingest import lifecycle
from memos_pipeline.llm import LLMClient
from memos_pipeline.schemas import SearchFilters, SearchJob, and_filters
from memos_pipeline.search import service
from memos_pipeline.stages import llm_stage
from memos_pipeline.stages import profile as profile_stage
from memos_pipeline.stages.prompts import mostly_cjk
from memos_pipeline.storage import memories
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Extraction, Ingest, Memory

STAGE = lifecycle.FEEDBACK
CANDIDATES = 10  # the user's facts shown to the model: what the feedback can be about


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class FeedbackAdd(_Out):
    memory_key: str = Field(min_length=1, max_length=200)
    memory_value: str = Field(min_length=1, max_length=2000)
    memory_type: Literal["LongTermMemory", "UserMemory"] = "UserMemory"
    tags: list[str] = Field(default_factory=list, max_length=10)


class FeedbackUpdate(_Out):
    target: str
    memory_value: str = Field(min_length=1, max_length=2000)
    memory_key: str | None = Field(None, max_length=200)


class FeedbackArchive(_Out):
    target: str
    reason: str = Field("", max_length=1000)


class FeedbackOut(_Out):
    add: list[FeedbackAdd] = Field(default_factory=list, max_length=20)
    update: list[FeedbackUpdate] = Field(default_factory=list, max_length=CANDIDATES)
    archive: list[FeedbackArchive] = Field(default_factory=list, max_length=CANDIDATES)


class FeedbackExtraction(BaseModel):
    """What is stored before anything is applied: the facts shown (ids, in the order of e0, e1...) and the answer."""

    candidates: list[str]
    decision: FeedbackOut


# "USER FEEDBACK" is how the fake LLM (fakes/llm.py) tells this prompt from the others.
FEEDBACK_SYSTEM = """You keep a user's memory store correct. The user gave USER FEEDBACK on what the assistant
remembers or said: a correction, a new fact, or something that is no longer true. You see the feedback (and when
it was given) and the stored facts about the user most related to it, as [e0], [e1]...

Decide what changes:
- add: facts the feedback states that no stored fact holds. memory_key: a short title; memory_value: the complete
  fact in one or two sentences, saying who it is about ("the user" / "用户"); memory_type: "UserMemory" for facts
  about the user, "LongTermMemory" for facts about the world and other people; tags: 1 to 5 keywords.
- update: a stored fact the feedback corrects or refines (target = its id; memory_value = the whole corrected
  fact; memory_key only if the title must change).
- archive: a stored fact the feedback says is wrong or no longer true, with nothing to replace it (target = its id;
  reason = why, briefly).
Change only what the feedback is about; every other fact stays as it is. Write in the language of the feedback;
resolve relative times ("yesterday", "上周") from the time the feedback was given.

Answer with one JSON object and nothing else:
{"add": [{"memory_key": "...", "memory_value": "...", "memory_type": "UserMemory", "tags": ["..."]}],
 "update": [{"target": "e0", "memory_value": "...", "memory_key": null}],
 "archive": [{"target": "e1", "reason": "..."}]}
Use empty lists when nothing changes."""


def feedback_prompt(content: str, when: str | None, facts: Sequence[str]) -> str:
    lines = "\n".join(f"[e{i}] {v}" for i, v in enumerate(facts)) or "(none)"
    return f"FEEDBACK{f' ({when})' if when else ''}: {content}\nSTORED FACTS:\n{lines}"


def target_index(ref: str, n: int, where: str) -> int:
    m = re.fullmatch(r"\[?e(\d+)\]?", ref.strip())
    if not m or int(m.group(1)) >= n:
        raise ValueError(f"{where}: {ref!r} is not a stored fact; use e0..e{n - 1}" if n else f"{where}: no facts")
    return int(m.group(1))


def check_feedback(out: FeedbackOut, n_facts: int, content: str) -> None:
    """Rules the schema cannot express; a violation triggers the repair round."""
    touched: set[int] = set()
    refs = [(f"update[{i}]", u.target) for i, u in enumerate(out.update)]
    refs += [(f"archive[{i}]", a.target) for i, a in enumerate(out.archive)]
    for where, ref in refs:
        idx = target_index(ref, n_facts, f"{where}.target")
        if idx in touched:
            raise ValueError(f"{where}.target: e{idx} is changed twice; one change per fact")
        touched.add(idx)
    if mostly_cjk(content):
        values = [*(a.memory_value for a in out.add), *(u.memory_value for u in out.update)]
        if any(not mostly_cjk(v) for v in values):
            raise ValueError("memory_value must be written in Chinese, the feedback's language")


def _fact_text(key: str, value: str) -> str:
    return f"{key}: {value}"  # what a fact's vector embeds (stages.facts does the same)


def run_feedback(
    settings: Settings, embedder: Embedder, llm: LLMClient, ingest_id: uuid.UUID
) -> llm_stage.StageResult | None:
    res = llm_stage.StageResult(
        usage=llm.usage, counts={"add": 0, "update": 0, "archive": 0, "duplicate": 0, "stale": 0}
    )
    with session_scope(settings) as s:
        opened = llm_stage.open_stage(s, settings, ingest_id, STAGE)  # a feedback has no turns: no batches
        if opened is None:
            return None
        ingest: Ingest = opened[0]
        fb = ingest.request.get("feedback") or {}
        content, when = str(fb.get("content") or ""), fb.get("time")
        agent = ingest.request.get("agent_id")

        def extract() -> FeedbackExtraction:
            job = SearchJob(
                tenant_id=ingest.tenant_id,
                user_id=ingest.user_id,
                query=content[:4000],
                top_k=CANDIDATES,
                include_preference=False,
                filters=SearchFilters(kind="fact"),
                filter=and_filters({"agent_id": agent} if agent else None),
                trace_id=ingest.trace_id,
            )
            # The fast search as the search worker runs it, here in the memreader: the facts it may be about.
            found = service.search(settings, job).memories
            decision = llm.chat_json(
                FEEDBACK_SYSTEM,
                feedback_prompt(content, when, [m["memory_value"] for m in found]),
                FeedbackOut,
                check=lambda o: check_feedback(o, len(found), content),
            )
            return FeedbackExtraction(candidates=[m["id"] for m in found], decision=decision)

        llm_stage.stored_or_extract(s, ingest_id, STAGE, 0, extract, llm.usage)
        # Read back what is stored rather than take the answer just computed: two runs at once (a redelivery while
        # the first still works) both ask the model, only one answer is stored, and both must apply that one.
        stored = s.execute(
            select(Extraction.output).where(
                Extraction.ingest_id == ingest_id, Extraction.stage == STAGE, Extraction.batch_idx == 0
            )
        ).scalar_one()
        out = FeedbackExtraction.model_validate(stored)
        _apply(s, settings, embedder, llm, ingest, out, res)
        # The user's profile follows the facts a feedback adds, as it follows an add's (stages/profile.py).
        profile_stage.update_profile(s, llm, ingest, llm.usage)
    return res


def _apply(
    s: Session,
    settings: Settings,
    embedder: Embedder,
    llm: LLMClient,
    ingest: Ingest,
    out: FeedbackExtraction,
    res: llm_stage.StageResult,
) -> None:
    actor = f"feedback:{ingest.task_id}"
    n = len(out.candidates)

    def target(ref: str) -> Memory | None:
        """The fact ``ref`` names, locked, if it is still active (else it was handled already)."""
        llm_stage.lock_user(s, ingest.tenant_id, ingest.user_id)
        mid = uuid.UUID(out.candidates[target_index(ref, n, "target")])
        m = memories.tenant_memory(s, ingest.tenant_id, mid, user_id=ingest.user_id, lock=True)
        if m is None or m.status != "activated":
            res.counts["stale"] += 1
            return None
        return m

    for a in out.decision.archive:
        old = target(a.target)
        if old is not None:
            memories.retire(s, old, "archived", actor)
            old.info = {**(old.info or {}), "archived_by_feedback": ingest.task_id, "reason": a.reason}
            res.archived_ids.append(old.id)
            res.counts["archive"] += 1
        s.commit()

    # Updates and adds need a vector each: embedded with the active model, one transaction per change.
    updates = out.decision.update
    adds = out.decision.add

    def kept_key(u: FeedbackUpdate) -> str:
        # The new version keeps the stored title unless the model gave one: its vector embeds the title it will have.
        if u.memory_key:
            return u.memory_key
        mid = uuid.UUID(out.candidates[target_index(u.target, n, "target")])
        m = memories.tenant_memory(s, ingest.tenant_id, mid, user_id=ingest.user_id)
        return m.memory_key if m is not None else ""

    texts = [_fact_text(kept_key(u), u.memory_value) for u in updates]
    texts += [_fact_text(a.memory_key, a.memory_value) for a in adds]

    def apply(j: int, vec: np.ndarray) -> None:
        if j < len(updates):
            _update(s, ingest, updates[j], vec, target, actor, res)
        else:
            _add(s, ingest, llm, j - len(updates), adds[j - len(updates)], vec, res)

    llm_stage.embed_and_apply(s, embedder, texts, apply, res)


def _update(
    s: Session,
    ingest: Ingest,
    u: FeedbackUpdate,
    vec: np.ndarray,
    target: Callable[[str], Memory | None],
    actor: str,
    res: llm_stage.StageResult,
) -> None:
    old = target(u.target)
    if old is None:
        return
    new = memories.new_version(
        s,
        old,
        memory_value=u.memory_value,
        memory_key=u.memory_key or old.memory_key,
        tags=list(old.tags or []),
        embedding=vec.tolist(),
        actor=actor,
        reason="feedback",
    )
    new.info = {**(new.info or {}), "feedback_task_id": ingest.task_id}
    res.new_ids.append(new.id)
    res.archived_ids.append(old.id)
    res.counts["update"] += 1


def _add(
    s: Session, ingest: Ingest, llm: LLMClient, j: int, a: FeedbackAdd, vec: np.ndarray, res: llm_stage.StageResult
) -> None:
    chash, known = llm_stage.known_fact(s, ingest, a.memory_key, a.memory_value)
    if known:  # also what a redelivery finds for a fact it added before
        res.counts["duplicate"] += 1
        return
    info = {"extracted_by": llm.settings.llm_model, "feedback_task_id": ingest.task_id}
    row = llm_stage.fact_row(ingest, j, a, vec, chash, sources=[], source_message_ids=[], info=info)
    new_id = s.execute(
        insert(Memory)
        .values(**row)
        .on_conflict_do_nothing(constraint="uq_memories_ingest_kind_chunk")
        .returning(Memory.id)
    ).scalar_one_or_none()
    if new_id is not None:
        res.new_ids.append(new_id)
        res.counts["add"] += 1
