"""Counting after a fault: has the pipeline drained, what was lost, what was stored twice, how long recovery took.

Everything is read from where it lives, not from what the pipeline says about itself: messages and memories from
Postgres, BM25 documents from the tantivy index on disk, and (for a sample) the answer of ``POST /search/memory``.
Definitions (also printed in the report):

- a message is **lost** when its add was accepted (HTTP 202 with an ingest id) and, after the drain, any of these
  fails: a ``messages`` row with its client id exists; a raw memory *of its own ingest* that lists it in
  ``source_message_ids`` is ``activated`` and has an embedding (vector-searchable); that memory's id is in the
  BM25 index (keyword-searchable); for the sampled messages, a search for its marker word returns a raw memory
  whose ``sources`` hold its client id;
- **duplicates**, over everything stored for the phase's conversations (not only what the client knows of):
  ``messages`` rows beyond one per client message id; ingests beyond one per accepted add (same Idempotency-Key);
  raw memories beyond one per (conversation, content hash); BM25 documents beyond one per memory id; activated
  facts beyond one per content hash.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tantivy
from sqlalchemy import text

from evaluation.chaos_load import Client, Outcome
from memos_pipeline.config import Settings
from memos_pipeline.storage.bm25.tantivy_index import gen_path, read_pointer
from memos_pipeline.storage.db import get_engine

TERMINAL = ("done", "skipped", "failed", "dead_lettered")
STAGES = ("chunker", "indexer", "memreader", "preference")
DEFINITIONS = {
    "lost": "accepted messages (HTTP 202 with an ingest id) that after the drain have no messages row, or no "
    "activated raw memory with an embedding of their own ingest listing them in source_message_ids, or whose "
    "raw memory is not in the BM25 index, or (sampled ones) are not returned by POST /search/memory for their "
    "unique marker word",
    "duplicates": "messages rows beyond one per client message id + ingests beyond one per accepted add "
    "(Idempotency-Key) + raw memories beyond one per (conversation, content_hash) + BM25 documents beyond one per "
    "memory id + activated facts beyond one per content_hash, over everything stored for the phase's conversations",
    "recover_s": "from the end of the fault (the service back, the workers restarted, the LLM answering again) to "
    "the moment every add accepted up to then was searchable (chunker and indexer stages finished); this includes "
    "the backlog of adds accepted before the fault",
    "sent_during_fault_searchable_s": "from the end of the fault until every add first sent while it lasted was "
    "searchable, wherever it was accepted (broker_outage: seconds from the broker back to every add accepted "
    "during the outage searchable)",
    "llm_recover_s": "from the end of the fault to the last LLM stage (memreader, preference) finishing",
    "first_chunk_after_fault_s": "from the end of the fault to the first chunker task starting (workers reconnected)",
    "chunker_s_per_add_after_fault": "mean chunker stage time of the adds chunked after the fault (the backlog rate)",
}


def _ts(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso).timestamp() if iso else None


def stage_rows(settings: Settings, conversations: list[str]) -> list[tuple[uuid.UUID, str, dict[str, Any]]]:
    sql = text("SELECT id, status, stages FROM ingests WHERE conversation_id = ANY(:c)")
    with get_engine(settings).connect() as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(sql, {"c": conversations})]


def wait_drained(
    settings: Settings,
    ingest_ids: Iterable[str],
    timeout_s: float,
    *,
    dead_ok: bool = True,
    on_poll: Callable[[int], None] | None = None,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Until every stage of every ingest is terminal. ``dead_ok=False`` (after a dead-letter replay): a
    dead-lettered stage is not terminal, the replayed task has yet to run. Returns how long it took."""
    ids = [uuid.UUID(i) for i in ingest_ids]
    terminal = ", ".join(f"'{t}'" for t in TERMINAL if dead_ok or t != "dead_lettered")
    sql = text(
        "SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM jsonb_each(stages) st "
        f"  WHERE st.value->>'status' NOT IN ({terminal}))) FROM ingests WHERE id = ANY(:ids)"
    )
    t0 = time.monotonic()
    while True:
        try:
            with get_engine(settings).connect() as conn:
                finished = int(conn.execute(sql, {"ids": ids}).scalar_one())
        except Exception:  # the database may still be coming back from its own fault
            finished = -1
        if on_poll is not None and finished >= 0:
            on_poll(finished)
        if finished == len(ids):
            return {"drained": True, "drain_s": round(time.monotonic() - t0, 2)}
        if time.monotonic() - t0 > timeout_s:
            return {
                "drained": False,
                "drain_s": round(time.monotonic() - t0, 2),
                "finished": finished,
                "ingests": len(ids),
            }
        time.sleep(poll_s)


def stage_summary(rows: list[tuple[uuid.UUID, str, dict[str, Any]]]) -> dict[str, Any]:
    """Per stage: how many ingests ended in each status, how many needed more than one attempt, how many the
    sweeper re-published."""
    out: dict[str, Any] = {}
    for st in STAGES:
        entries = [stages.get(st, {}) for _, _, stages in rows]
        out[st] = {
            "status": dict(Counter(e.get("status", "missing") for e in entries)),
            "attempts_gt_1": sum(1 for e in entries if int(e.get("attempts", 0)) > 1),
            "swept": sum(1 for e in entries if e.get("swept")),
        }
    return out


def _searchable_at(stages: dict[str, Any]) -> float | None:
    """When both the vector (chunker) and the keyword (indexer) side of the add were done."""
    if not all(stages.get(st, {}).get("status") == "done" for st in ("chunker", "indexer")):
        return None
    done = [_ts(stages[st].get("finished_at")) for st in ("chunker", "indexer")]
    return max(t for t in done if t is not None)


def recovery(
    rows: list[tuple[uuid.UUID, str, dict[str, Any]]], outcomes: list[Outcome], t_start: float, t_end: float
) -> dict[str, Any]:
    """Seconds from ``t_end`` until the adds accepted by then were all searchable (and, of those, the adds sent
    while the fault lasted), and until the LLM stages of all the phase's ingests had finished."""
    stages = {str(i): s for i, _, s in rows}
    searchable: list[float] = []
    sent_during: list[float] = []
    for o in outcomes:
        if o.ingest_id is None or o.accepted_at is None or o.accepted_at > t_end:
            continue
        if (t := _searchable_at(stages.get(o.ingest_id, {}))) is not None:
            searchable.append(t)
    for o in outcomes:  # sent while the fault lasted, accepted whenever (a down database refuses them until back)
        at = _searchable_at(stages.get(o.ingest_id, {})) if o.ingest_id is not None else None
        if at is not None and t_start <= o.first_sent <= t_end:
            sent_during.append(at)
    # Where the recovery time went: waiting for the workers to consume again, then chunking the backlog.
    chunked = [
        c
        for s in stages.values()
        if (c := s.get("chunker", {})).get("status") == "done" and (_ts(c.get("started_at")) or 0.0) >= t_end
    ]
    first_chunk = min((_ts(c["started_at"]) or 0.0 for c in chunked), default=None)
    chunk_s = [float(c.get("ms", 0)) / 1000 for c in chunked]
    llm_done = [
        t
        for s in stages.values()
        for st in ("memreader", "preference")
        if s.get(st, {}).get("status") == "done" and (t := _ts(s[st].get("finished_at"))) is not None
    ]
    return {
        "recover_s": round(max(0.0, max(searchable) - t_end), 2) if searchable else None,
        "sent_during_fault_searchable_s": round(max(0.0, max(sent_during) - t_end), 2) if sent_during else None,
        "llm_recover_s": round(max(0.0, max(llm_done) - t_end), 2) if llm_done else None,
        "first_chunk_after_fault_s": round(first_chunk - t_end, 2) if first_chunk is not None else None,
        "adds_chunked_after_fault": len(chunked),
        "chunker_s_per_add_after_fault": round(sum(chunk_s) / len(chunk_s), 2) if chunk_s else None,
    }


def bm25_ids(bm25_dir: Path, tenant_id: str, conversations: list[str]) -> Counter[str]:
    """Memory ids of the BM25 documents of these conversations, with how often each is in the index."""
    path = gen_path(bm25_dir, read_pointer(bm25_dir).current)
    if not (path / "meta.json").exists():
        return Counter()
    index = tantivy.Index.open(str(path))
    index.reload()
    schema = index.schema
    q = tantivy.Query.boolean_query(
        [
            (tantivy.Occur.Must, tantivy.Query.term_query(schema, "tenant", tenant_id)),
            (tantivy.Occur.Must, tantivy.Query.term_set_query(schema, "conv", conversations)),
        ]
    )
    searcher = index.searcher()
    ids: Counter[str] = Counter()
    offset = 0
    while hits := searcher.search(q, 10_000, count=False, offset=offset).hits:
        ids.update(searcher.doc(addr)["id"][0] for _, addr in hits)
        offset += len(hits)
    return ids


def _extra(counts: Iterable[int]) -> int:
    return sum(c - 1 for c in counts if c > 1)


def count_phase(
    settings: Settings,
    tenant_id: uuid.UUID,
    conversations: list[str],
    outcomes: list[Outcome],
    client: Client,
    sample: int,
    seed: int = 7,
) -> dict[str, Any]:
    """Lost and duplicated messages of one phase (see the module docstring for the definitions)."""
    accepted = [o for o in outcomes if o.accepted]
    expected = {cid: o for o in accepted for cid in o.add.markers}
    params = {"t": tenant_id, "c": conversations}
    with get_engine(settings).connect() as conn:
        msgs = conn.execute(
            text("SELECT id, client_id, ingest_id FROM messages WHERE tenant_id = :t AND conversation_id = ANY(:c)"),
            params,
        ).all()
        raws = conn.execute(
            text(
                "SELECT id, ingest_id, conversation_id, content_hash, status, embedding IS NOT NULL, source_message_ids "
                "FROM memories WHERE tenant_id = :t AND conversation_id = ANY(:c) AND kind = 'raw'"
            ),
            params,
        ).all()
        n_ingests = conn.execute(
            text("SELECT count(*) FROM ingests WHERE tenant_id = :t AND conversation_id = ANY(:c)"), params
        ).scalar_one()
        fact_hashes = (
            conn.execute(
                text(
                    "SELECT content_hash FROM memories WHERE tenant_id = :t AND conversation_id "
                    "= ANY(:c) AND kind = 'fact' AND status = 'activated'"
                ),
                params,
            )
            .scalars()
            .all()
        )
    in_bm25 = bm25_ids(settings.bm25_dir, str(tenant_id), conversations)

    by_client = Counter(m.client_id for m in msgs)
    raw_of: dict[tuple[uuid.UUID, uuid.UUID], list[Any]] = {}
    for r in raws:
        for mid in r[6] or []:
            raw_of.setdefault((r[1], mid), []).append(r)
    problems: dict[str, list[str]] = {
        "no_message_row": [],
        "no_raw_memory": [],
        "not_in_bm25": [],
        "not_found_by_search": [],
    }
    stored = {(m.client_id, str(m.ingest_id)): m for m in msgs}
    for cid, o in expected.items():
        m = stored.get((cid, str(o.ingest_id)))
        if m is None:
            problems["no_message_row"].append(cid)
            continue
        mine = [r for r in raw_of.get((m.ingest_id, m.id), []) if r[4] == "activated" and r[5]]
        if not mine:
            problems["no_raw_memory"].append(cid)
        elif not any(str(r[0]) in in_bm25 for r in mine):
            problems["not_in_bm25"].append(cid)
    checked = random.Random(seed).sample(sorted(expected), min(sample, len(expected)))
    for cid in checked:
        hits = client.memories(expected[cid].add.markers[cid], top_k=5, kind="raw")
        if not any(cid in h["sources"] for h in hits):
            problems["not_found_by_search"].append(cid)
    lost = sorted({cid for ids in problems.values() for cid in ids})
    duplicates = {
        "messages": _extra(by_client.values()),
        "ingests": max(0, int(n_ingests) - len({o.ingest_id for o in accepted})),
        "raw_memories": _extra(Counter((r[2], r[3]) for r in raws).values()),
        "bm25_docs": _extra(in_bm25.values()),
        "facts": _extra(Counter(fact_hashes).values()),
    }
    return {
        "adds": len(outcomes),
        "adds_accepted": len(accepted),
        "messages_accepted": len(expected),
        "messages_stored": len(by_client),
        "raw_memories": len(raws),
        "bm25_docs": sum(in_bm25.values()),
        "facts": len(fact_hashes),
        "searched_sample": len(checked),
        "lost": len(lost),
        "lost_detail": {k: v[:20] for k, v in problems.items() if v},
        "duplicates": sum(duplicates.values()),
        "duplicates_detail": duplicates,
    }
