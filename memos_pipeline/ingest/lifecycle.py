"""The stage lifecycle of an ingest, in one place: which stages exist and in what order, the task that runs
each, the transitions a stage goes through (pending, running, retrying, done, skipped, failed, dead_lettered) and
the ingest's overall status that follows from them. Workers, the outbox relay and the sweeper ask here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memos_pipeline.schemas import IndexJob, IngestJob
from memos_pipeline.storage.db import now
from memos_pipeline.storage.models import Ingest

STAGES = ("chunker", "indexer", "memreader", "preference")
# The task that advances each stage (the chunker fans out to the others; the sweeper re-publishes).
STAGE_TASKS: dict[str, str] = {
    "chunker": "memos.chunker.chunk",
    "indexer": "memos.indexer.upsert_ingest",
    "memreader": "memos.memreader.extract",
    "preference": "memos.preference.extract",
}
# The chunker stores the windows, publishes the indexer (keyword-searchable before the vectors exist), embeds, and
# then publishes the LLM stages, which read what it wrote.
AFTER_STORE = "indexer"
AFTER_CHUNK = ("memreader", "preference")
# A feedback (POST /add/feedback, ingest/feedback.py) is an ingest with this one stage: no messages, no chunker.
FEEDBACK = "feedback"
STAGE_TASKS[FEEDBACK] = "memos.memreader.feedback"
# A knowledge-base file (storage/knowledgebases.py) is an ingest with two stages: ``document`` (read, split, embed,
# store passages; on the chunker queue, whose workers hold the embedder) and then the usual ``indexer`` (BM25).
DOCUMENT = "document"
STAGE_TASKS[DOCUMENT] = "memos.chunker.document"
# An add's tool calls and results (text/tools.py) are an ingest of their own in the same way: ``tools`` (embed and
# store the tool memories, memos.chunker.tools) and then the ``indexer``.
TOOLS = "tools"
STAGE_TASKS[TOOLS] = "memos.chunker.tools"


TERMINAL = frozenset({"done", "skipped", "failed", "dead_lettered"})


FAILED = frozenset({"failed", "dead_lettered"})


def initial_stages(*, llm: bool, scheduler: bool, preference: bool) -> dict[str, dict[str, Any]]:
    def llm_stage(enabled: bool, off_reason: str) -> dict[str, Any]:
        if not scheduler:
            return {"status": "skipped", "reason": "MOS_ENABLE_SCHEDULER=false: raw memories only"}
        if not enabled:
            return {"status": "skipped", "reason": off_reason}
        if not llm:
            return {"status": "skipped", "reason": "no LLM configured (MEMOS_LLM_BASE_URL/MEMOS_LLM_MODEL unset)"}
        return {"status": "pending"}

    return {
        "chunker": {"status": "pending"},
        "indexer": {"status": "pending"},
        "memreader": llm_stage(True, ""),
        "preference": llm_stage(preference, "ENABLE_PREFERENCE_MEMORY=false"),
    }


def feedback_stages() -> dict[str, dict[str, Any]]:
    return {FEEDBACK: {"status": "pending"}}


def document_stages(first: str = DOCUMENT) -> dict[str, dict[str, Any]]:
    """A knowledge-base file's stages (or, with ``first=TOOLS``, an add's tool memory's)."""
    return {first: {"status": "pending"}, "indexer": {"status": "pending"}}


def overall_status(stages: dict[str, Any]) -> str:
    states = [s.get("status", "pending") for s in stages.values()]
    if any(s in FAILED for s in states):
        return "failed"
    if all(s in TERMINAL for s in states):
        return "done"
    if any(s in ("running", "done", "retrying") for s in states):
        return "processing"
    return "accepted"


def mark_stage(session: Session, ingest_id: uuid.UUID, stage: str, status: str, **fields: Any) -> str:
    """Record a stage transition (row-locked read-modify-write) and return the ingest's overall status."""
    # populate_existing: the session may hold this ingest from earlier in the task; without it the locked re-read
    # returns that stale copy and we would write back stages another worker changed meanwhile (lost update).
    ingest = session.execute(
        select(Ingest).where(Ingest.id == ingest_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if ingest is None:
        return "missing"
    stages = dict(ingest.stages or {})
    entry = dict(stages.get(stage, {}))
    t = now()
    if status == "running":
        entry.setdefault("started_at", t.isoformat())
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
    elif status in TERMINAL:
        entry["finished_at"] = t.isoformat()
        if "started_at" in entry:
            started = dt.datetime.fromisoformat(entry["started_at"])
            entry["ms"] = round((t - started).total_seconds() * 1000, 2)
    if status in ("running", "done") and "error" in entry:
        entry["last_error"] = entry.pop("error")  # a recovered stage keeps its history, not a current error
    entry.update(status=status, **fields)
    stages[stage] = entry
    overall = overall_status(stages)
    ingest.stages = stages
    ingest.status = overall
    ingest.updated_at = t
    if overall in ("done", "failed") and ingest.finished_at is None:
        ingest.finished_at = t
    return overall


def stage_payload(stage: str, ingest_id: uuid.UUID) -> dict[str, Any]:
    """The message that runs ``stage`` for one ingest: only ids, through the stage's pydantic model."""
    job = IndexJob(ingest_id=ingest_id) if stage == "indexer" else IngestJob(ingest_id=ingest_id)
    return job.model_dump(mode="json")


def next_stages(stages: dict[str, Any]) -> list[str]:
    """What the chunker publishes once the raw memories have their vectors: every LLM stage still pending (a
    skipped one, no LLM or switched off, is not sent). The indexer went out when they were stored."""
    return [st for st in AFTER_CHUNK if stages.get(st, {}).get("status") not in TERMINAL]


def stage_to_resume(stages: dict[str, Any]) -> str | None:
    """The sweeper's question: which task would move a stuck ingest on? None when every stage is terminal.

    The later stages read what the chunker wrote, so nothing after it is resumed before it is done. A feedback
    ingest has its one stage and nothing else to wait for.
    """
    if FEEDBACK in stages:
        return None if stages[FEEDBACK].get("status") in TERMINAL else FEEDBACK
    for first in (DOCUMENT, TOOLS):  # a knowledge-base file or tool memory: its rows first, then BM25
        if first in stages:
            if stages[first].get("status") not in TERMINAL:
                return first
            if stages[first].get("status") != "done":
                return None  # it failed: nothing to index
            return None if stages.get("indexer", {}).get("status") in TERMINAL else "indexer"
    stage = next((st for st in STAGES if stages.get(st, {}).get("status") not in TERMINAL), None)
    if stage is not None and stage != "chunker" and stages.get("chunker", {}).get("status") != "done":
        return "chunker"
    return stage
