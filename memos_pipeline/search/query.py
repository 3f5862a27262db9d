"""Enriching a search query with the conversation's recent turns (``API_SEARCH_HISTORY_TURNS``).

A follow-up like "and what did she think of it?" names nothing a memory could match; the turns just before it do.
Of the conversation's last ``API_SEARCH_WINDOW_SIZE`` turns, the ``API_SEARCH_HISTORY_TURNS`` closest to the query
(cosine, the same embedding model) join it: BM25 gets their tokens, the dense query vector moves towards them by
``HISTORY_WEIGHT``. The query itself keeps the larger say. Off (0 turns) by default: on LoCoMo, where questions are
asked outside the conversation, the history is unrelated text (measured in evaluation/).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from memos_pipeline.embedders import Embedder
from memos_pipeline.schemas import SearchJob
from memos_pipeline.storage.models import Ingest, Message

HISTORY_WEIGHT = 0.5  # the history's share of the dense query vector, relative to the query's 1.0


@dataclass(frozen=True)
class Query:
    text: str  # what BM25 analyses: the query, then the chosen history turns
    vector: np.ndarray  # the dense query vector (unit length)
    query_vector: np.ndarray  # the query alone (preferences are matched on what was asked, not on the history)
    history: tuple[str, ...] = ()
    seen_message_ids: frozenset[str] = frozenset()


def recent_turns(session: Session, job: SearchJob, window: int) -> list[tuple[str, str]]:
    """(message id, content) of the last ``window`` turns of the job's conversation, oldest first, read in the
    job's tenant/user scope."""
    conversation = job.conversation_id or job.filters.conversation_id
    if window <= 0 or conversation is None:
        return []
    rows = session.execute(
        select(Message.id, Message.content)
        .join(Ingest, Ingest.id == Message.ingest_id)
        .where(
            Message.tenant_id == job.tenant_id, Message.user_id == job.user_id, Message.conversation_id == conversation
        )
        .order_by(Ingest.created_at.desc(), Message.seq.desc())
        .limit(window)
    ).all()
    return [(str(i), c) for i, c in reversed(rows)]


def pick_history(qvec: np.ndarray, turns: list[str], vecs: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` turns most similar to the query, in conversation order (ties: the later turn)."""
    if n <= 0 or not turns:
        return []
    sims = vecs @ qvec
    best = sorted(range(len(turns)), key=lambda i: (-float(sims[i]), -i))[:n]
    return sorted(best)


def build_query(session: Session, embedder: Embedder, job: SearchJob, history_turns: int, window: int) -> Query:
    """The query as search uses it: alone when history is off or the conversation has none."""
    recent = recent_turns(session, job, max(window, history_turns)) if history_turns > 0 else []
    turns = [content for _, content in recent]
    vecs = embedder.embed([job.query, *turns])  # one batch: the history costs no extra model call
    qvec = vecs[0]
    chosen = pick_history(qvec, turns, vecs[1:], history_turns)
    if not chosen:
        return Query(job.query, qvec, qvec)
    mixed = qvec + HISTORY_WEIGHT * vecs[1:][chosen].mean(axis=0)
    mixed = (mixed / (np.linalg.norm(mixed) or 1.0)).astype(np.float32)
    history = tuple(turns[i] for i in chosen)
    # The whole recent window counts as seen: the caller has those turns, returning them would waste its context
    # (and the enriched query would find them first).
    return Query("\n".join([job.query, *history]), mixed, qvec, history, frozenset(i for i, _ in recent))
