"""Offline replay of the fast search's ranking: ingest a benchmark once through the real pipeline, record every
question's raw recall lists (each memory's exact cosine, BM25 hits far past the candidate cut), then try ranking
variants on the recording in seconds instead of re-ingesting for each.

The recording is what :func:`memos_pipeline.search.recall.fast_search` reads before it fuses: the dense list
(here the whole scope, ranked exactly; the search cuts it at its candidate count) and the BM25 list, plus the
memories' turns and dates to pack and score as the harness does. Variants are judged on it, and the winner is then
measured end to end with ``memos-pipeline eval``: the replay is a tool for choosing, not a result.

Run: ``python -m evaluation.replay locomo --data PATH --out FILE`` (or ``prefeval``), then
``python -m evaluation.replay cv FILE`` for the 5-fold cross-validation by conversation of the fitted constants.
"""

from __future__ import annotations

import json
import pickle
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from evaluation import locomo as locomo_mod
from evaluation import metrics
from evaluation import prefeval as prefeval_mod
from evaluation import recall_feedback as feedback
from evaluation.locomo import TokenCounter
from memos_pipeline.config import get_settings
from memos_pipeline.embedders import get_embedder
from memos_pipeline.search import context, fusion, recall, temporal
from memos_pipeline.storage import ingests
from memos_pipeline.storage.bm25 import Bm25Query, get_index
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory, Message
from memos_pipeline.text.chunking import render_window
from memos_pipeline.text.tokenizer import tokenize

BM25_DEPTH = 1000


def _user_state(session: Any, tenant_id: uuid.UUID, user_id: str) -> dict[str, Any]:
    mems = session.execute(
        select(Memory).where(Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.status == "activated")
    ).scalars()
    memories = {
        str(m.id): {
            "kind": m.kind,
            "message_ids": [str(x) for x in m.source_message_ids or ()],
            "sources": list(m.sources or []),
            "value": m.memory_value,
            "info": dict(m.info or {}),
        }
        for m in mems
    }
    msgs = session.execute(select(Message).where(Message.tenant_id == tenant_id, Message.user_id == user_id)).scalars()
    turns = {str(m.id): ingests.turn_of(m) for m in msgs}
    return {"memories": memories, "turns": turns}


def _record(session: Any, embedder: Any, index: Any, tenant_id: uuid.UUID, user_id: str, query: str) -> dict[str, Any]:
    qvec = embedder.embed([query])[0]
    d = Memory.embedding.cosine_distance(qvec.tolist())
    rows = session.execute(
        select(Memory.id, d).where(
            Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.status == "activated"
        )
    ).all()
    dense = sorted(((str(i), 1.0 - float(x)) for i, x in rows), key=lambda kv: (-kv[1], kv[0]))
    bm25 = index.search(Bm25Query(str(tenant_id), user_id, tuple(tokenize(query)), None, (), BM25_DEPTH))
    return {"query": query, "dense": dense, "bm25": [(str(i), float(s)) for i, s in bm25]}


@click.group()
def main() -> None:
    """Record recall lists for offline ranking experiments."""


@main.command("locomo")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--conversations", type=int, default=None)
def dump_locomo(data: Path, out: Path, conversations: int | None) -> None:
    convs = locomo_mod.load_locomo(data, conversations)
    questions = [q for c in convs for q in c.questions if q.evidence and q.category in locomo_mod.CATEGORIES]
    with locomo_mod.own_stack(get_settings(), "replay") as h:
        locomo_mod.ingest_all(h.api, convs, True)
        index, embedder = get_index(h.settings), get_embedder(h.settings)
        with session_scope(h.settings) as s:
            users = {c.sample_id: _user_state(s, h.tenant_id, c.sample_id) for c in convs}
            recs = []
            for q in questions:
                r = _record(s, embedder, index, h.tenant_id, q.conversation, q.question)
                r.update(user=q.conversation, category=q.category, evidence=list(q.evidence), index=q.index)
                recs.append(r)
    out.write_bytes(pickle.dumps({"users": users, "questions": recs}))
    print(f"{len(recs)} questions -> {out}", file=sys.stderr)


@main.command("prefeval")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--topics", type=int, default=prefeval_mod.DEFAULT_TOPICS)
@click.option("--fillers", default="0,10,300")
def dump_prefeval(data: Path, out: Path, topics: int, fillers: str) -> None:
    counts = [int(x) for x in fillers.split(",")]
    items = prefeval_mod.sample_topics(prefeval_mod.load_topics(data), topics, 0)
    pool = prefeval_mod.load_fillers(data)
    cases = [(it, n) for it in items for n in counts]
    with locomo_mod.own_stack(get_settings(), "replay") as h:

        def user(it: Any, n: int) -> str:
            return f"pe-{it.topic}-{it.index}-f{n}"

        def adds(it: Any, n: int) -> list[tuple[str, str, list[dict[str, Any]]]]:
            msgs = prefeval_mod.filler_messages(pool, n)
            pref = [{"role": "user", "content": it.preference, "id": prefeval_mod.PREF_ID}]
            chunks = [pref] + [msgs[i : i + prefeval_mod.PER_ADD] for i in range(0, len(msgs), prefeval_mod.PER_ADD)]
            return [(user(it, n), prefeval_mod.CONVERSATION_ID, m) for m in chunks]

        timeout = 600 + 0.5 * sum(2 * n + 1 for _, n in cases)
        locomo_mod.add_all(h.api, [adds(it, n) for it, n in cases], timeout, True, prefeval_mod.CLIENT_THREADS)
        index, embedder = get_index(h.settings), get_embedder(h.settings)
        with session_scope(h.settings) as s:
            users = {user(it, n): _user_state(s, h.tenant_id, user(it, n)) for it, n in cases}
            recs = []
            for it, n in cases:
                r = _record(s, embedder, index, h.tenant_id, user(it, n), it.question)
                r.update(user=user(it, n), fillers=n, topic=it.topic, evidence=[prefeval_mod.PREF_ID])
                recs.append(r)
    out.write_bytes(pickle.dumps({"users": users, "questions": recs}))
    print(f"{len(recs)} questions -> {out}", file=sys.stderr)


# ---------------------------------------------------------------- replaying a ranking

Ranker = Callable[[dict[str, float], dict[str, float], dict[str, Any], dict[str, Any]], dict[str, float]]


def candidates(rec: dict[str, Any], top_k: int) -> tuple[dict[str, float], dict[str, float]]:
    """The two lists as fast_search holds them before fusing: the dense top n_cand, the BM25 top n_cand, and every
    BM25 candidate's cosine beside the dense ones (the search re-reads them with their distance)."""
    n_cand = max(4 * top_k, recall.MIN_CANDIDATES)
    cos_all = dict(rec["dense"])
    dense = dict(rec["dense"][:n_cand])
    bm25 = {i: s for i, s in rec["bm25"][:n_cand] if i in cos_all}
    for i in bm25:
        dense.setdefault(i, cos_all[i])
    return dense, bm25


def replay(rec: dict[str, Any], user: dict[str, Any], ranker: Ranker, top_k: int) -> list[tuple[list[str], str]]:
    """(sources, text) of the items the search would return with ``ranker`` as its fusion."""
    dense, bm25 = candidates(rec, top_k)
    ranked = fusion.top(ranker(dense, bm25, rec, user), 10**9)
    mems, turns = user["memories"], user["turns"]
    cands = [context.Candidate(i, s, mems[i]["kind"], tuple(mems[i]["message_ids"])) for i, s in ranked]
    out = []
    for r in context.pack(cands, top_k):
        m = mems[r.memory_id]
        if context.is_whole(r, m["message_ids"]) or not all(t in turns for t in r.turns or ()):
            out.append((list(m["sources"]), m["value"]))
        else:
            shown = [turns[t] for t in r.turns or ()]
            out.append(([t.source_id for t in shown], render_window(shown)))
    return out


def weighted(
    dense: dict[str, float], bm25: dict[str, float], rec: dict[str, Any], user: dict[str, Any]
) -> dict[str, float]:
    """Today's fusion (recall.FUSION_WEIGHTS, BM25 max-normalised)."""
    return fusion.weighted({"dense": dense, "bm25": bm25}, recall.FUSION_WEIGHTS, frozenset({"bm25"}))


def score(
    dump: dict[str, Any],
    ranker: Ranker,
    top_k: int,
    ks: tuple[int, ...] = (5, 10),
    budget: int = 2000,
    count: Callable[[str], int] | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[Any, Any]]:
    """Per question: recall@k and (with ``count``) recall within ``budget`` tokens."""
    out = []
    for rec in dump["questions"]:
        if keep is not None and not keep(rec):
            continue
        items = replay(rec, dump["users"][rec["user"]], ranker, top_k)
        ranked = [s for s, _ in items]
        row: dict[Any, Any] = {k: metrics.recall_at_k(rec["evidence"], ranked, k) for k in ks}
        if count is not None:
            depth = metrics.budget_depth([count(t) for _, t in items], budget)
            row["budget"] = metrics.recall_at_k(rec["evidence"], ranked, depth)
        row.update({k: rec.get(k) for k in ("user", "category", "fillers", "topic")})
        out.append(row)
    return out


def cross_validate(
    dump: dict[str, Any],
    grid: dict[str, Ranker],
    top_k: int,
    metric: Callable[[list[dict[Any, Any]]], float],
    count: Callable[[str], int] | None = None,
) -> tuple[list[dict[Any, Any]], dict[str, str]]:
    """Leave-one-conversation-out (5 folds on LoCoMo dev's 5 conversations): for each held-out user, the variant of
    ``grid`` with the best ``metric`` on the other users' questions ranks the held-out questions. Returns the pooled
    held-out rows and the variant chosen per fold: an estimate of what the fitted choice does on unseen
    conversations, which an in-sample best never is."""
    rows = {name: score(dump, ranker, top_k, count=count) for name, ranker in grid.items()}
    users = sorted({r["user"] for r in next(iter(rows.values()))})
    held: list[dict[Any, Any]] = []
    chosen: dict[str, str] = {}
    for u in users:
        best = max(grid, key=lambda n: (metric([r for r in rows[n] if r["user"] != u]), n == next(iter(grid))))
        chosen[u] = best
        held += [r for r in rows[best] if r["user"] == u]
    return held, chosen


def gated_temporal(floor: float, full: float, date_bonus: float, when_bonus: float) -> Ranker:
    """The fast search's ranking (fusion.gated, then temporal.boost) with the given constants."""

    def rank(
        dense: dict[str, float], bm25: dict[str, float], rec: dict[str, Any], user: dict[str, Any]
    ) -> dict[str, float]:
        fused = fusion.gated(dense, bm25, recall.FUSION_WEIGHTS, floor, full)
        mems = user["memories"]
        return temporal.boost(
            fused,
            rec["query"],
            lambda i: (mems[i]["info"], mems[i]["value"]) if i in mems else None,
            date_bonus=date_bonus,
            when_bonus=when_bonus,
        )

    return rank


def with_feedback(base: Ranker, weight: float, seed: int, n_terms: int, entities: bool = False) -> Ranker:
    """``base`` then :func:`evaluation.recall_feedback.boost` (rare terms of the top ``seed`` hits; with
    ``entities``, only those of capitalised words: the entity-centred second stage)."""

    def rank(
        dense: dict[str, float], bm25: dict[str, float], rec: dict[str, Any], user: dict[str, Any]
    ) -> dict[str, float]:
        mems = user["memories"]
        fused = base(dense, bm25, rec, user)
        return feedback.boost(
            fused,
            lambda i: mems[i]["value"] if i in mems else None,
            rec["query"],
            weight=weight,
            seed=seed,
            n_terms=n_terms,
            entities=entities,
        )

    return rank


def with_sessions(base: Ranker, weight: float, seed: int, reach: int) -> Ranker:
    """``base`` then a bonus of ``weight`` for candidates whose session is within ``reach`` sessions (by date order)
    of one of the top ``seed`` hits' sessions (session proximity; 0 = the same session)."""

    def rank(
        dense: dict[str, float], bm25: dict[str, float], rec: dict[str, Any], user: dict[str, Any]
    ) -> dict[str, float]:
        mems = user["memories"]
        fused = base(dense, bm25, rec, user)
        order = user.get("_session_order")
        if order is None:
            starts = sorted({d[0] for m in mems.values() if (d := temporal.memory_dates(m["info"])) is not None})
            order = user["_session_order"] = {d: k for k, d in enumerate(starts)}

        def pos(i: str) -> int | None:
            d = temporal.memory_dates(mems[i]["info"]) if i in mems else None
            return order.get(d[0]) if d is not None else None

        top = [i for i, _ in fusion.top(fused, seed)]
        near = {p for i in top if (p := pos(i)) is not None}
        out = dict(fused)
        for i in out:
            if i in top:
                continue
            p = pos(i)
            if p is not None and any(abs(p - q) <= reach for q in near):
                out[i] += weight
        return out

    return rank


def _overall(rows: list[dict[Any, Any]], key: Any) -> float:
    scored = [r[key] for r in rows if r["category"] in locomo_mod.SCORED]
    return sum(scored) / len(scored)


@main.command("cv")
@click.argument("dump", type=click.Path(exists=True, path_type=Path))
def cv_cmd(dump: Path) -> None:
    """5-fold (leave one conversation out) cross-validation of the gate and the time bonuses on a LoCoMo dump:
    R@10 and recall within 2,000 tokens of the held-out folds, overall and per category, and each fold's choice."""
    data = pickle.loads(dump.read_bytes())
    gates = [(0.2, 0.4), (0.2, 0.45), (0.2, 0.5), (0.25, 0.45)]
    grid = {
        f"gate {g[0]}-{g[1]} date {wd} when {ww}": gated_temporal(g[0], g[1], wd, ww)
        for g in gates
        for wd in (0.0, 0.05, 0.1)
        for ww in (0.0, 0.03, 0.06)
    }
    held, chosen = cross_validate(data, grid, locomo_mod.BUDGET_TOP_K, lambda rows: _overall(rows, 10), TokenCounter())
    print(json.dumps({"chosen": chosen, "R@10": _overall(held, 10), "R@2000tok": _overall(held, "budget")}))
    for c in locomo_mod.SCORED:
        rows = [r for r in held if r["category"] == c]
        r10 = sum(r[10] for r in rows) / len(rows)
        rb = sum(r["budget"] for r in rows) / len(rows)
        print(f"{locomo_mod.CATEGORIES[c]}: R@10 {r10:.4f} R@2000tok {rb:.4f} (n={len(rows)})")


def _report(rows: list[dict[Any, Any]]) -> dict[str, float]:
    out = {"R@10": _overall(rows, 10), "R@2000tok": _overall(rows, "budget")}
    for c in locomo_mod.SCORED:
        cat = [r for r in rows if r["category"] == c]
        out[locomo_mod.CATEGORIES[c]] = sum(r[10] for r in cat) / len(cat)
    return out


@main.command("variants")
@click.argument("dump", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--family",
    type=click.Choice(["feedback", "entities", "sessions"]),
    multiple=True,
    default=("feedback", "entities", "sessions"),
)
def variants_cmd(dump: Path, family: tuple[str, ...]) -> None:
    """Issue 12's second-stage variants on a LoCoMo dump, each family on top of today's ranking (gate 0.2-0.4, date
    0.1, when 0.06): every grid point on all of dev (in-sample, for reading only), then the family's 5-fold
    cross-validation by conversation (the grid includes weight 0, today's ranking).

    Measured 3 Dec 2026 (dev, fast, onnx-int8 recording; R@10 / R@2000tok / R@10 multi-hop, temporal, open-domain,
    single-hop). None reached the +0.005 R@10 in CV asked for shipping, so none is in the service:

    ============================================  ======  =========  ======  ======  ======  ======
    variant                                       R@10    R@2000tok  multi   temp    open    single
    ============================================  ======  =========  ======  ======  ======  ======
    today (gate + date/when bonuses)              0.8808  0.8875     0.6321  0.9647  0.5833  0.9653
    feedback (rare terms of top hits), CV         0.8849  0.8899     0.6468  0.9647  0.5833  0.9677
    (every fold chose w 0.05 seed 1 terms 20; a wider grid, w 0.03-0.07 seeds 1-2 terms 20-40: same CV)
    entities (capitalised words only), CV         0.8804  0.8868     0.6274  0.9647  0.5909  0.9653
    sessions (same/adjacent session), CV          0.8795  0.8873     0.6250  0.9647  0.5833  0.9653
    dense Rocchio (q + a * mean of top hits), CV  0.8853  0.8880     0.6579  0.9647  0.5777  0.9653
    ============================================  ======  =========  ======  ======  ======  ======

    Feedback's +0.0041 comes from 4 multi-hop and 2-3 temporal/single-hop questions out of 997; seeds 2-5 (the top
    hits are overlapping windows of one exchange, so more seeds add that exchange's words, not leads) and weights
    past 0.05 lose. Dense Rocchio (a second cosine against the query plus a=0.3/0.7 times the mean vector of the top
    1/3 hits, mixed 0.3/0.6 into the fused score) was measured with a scratch script, not kept here: the recording
    holds no memory vectors, and re-embedding the memories' values gave cosines up to 0.15 off the stored ones, so
    its +0.0045 is indicative only; in the service it would cost a second dense query. PrefEval replay (fast recall@5 at 0/10/300 fillers): 1.0/1.0/0.7 with and without it."""
    data = pickle.loads(dump.read_bytes())
    count = TokenCounter()
    base = gated_temporal(recall.GATE_FLOOR, recall.GATE_FULL, recall.DATE_BONUS, recall.WHEN_BONUS)
    families: dict[str, dict[str, Ranker]] = {
        "feedback": {
            f"feedback w {w} seed {sd} terms {nt}": with_feedback(base, w, sd, nt)
            for w in (0.02, 0.05, 0.1)
            for sd in (1, 3, 5)
            for nt in (5, 20)
        },
        "entities": {
            f"entities w {w} seed {sd} terms 10": with_feedback(base, w, sd, 10, entities=True)
            for w in (0.03, 0.05, 0.1)
            for sd in (1, 3)
        },
        "sessions": {
            f"sessions w {w} seed {sd} reach {r}": with_sessions(base, w, sd, r)
            for w in (0.01, 0.03)
            for sd in (1, 3)
            for r in (0, 1)
        },
    }
    fmt = "{:<40} " + " ".join(["{:>9}"] * 6)
    print(fmt.format("variant", "R@10", "R@2000tok", "multi-hop", "temporal", "open-dom", "single"))

    def line(name: str, rows: list[dict[Any, Any]]) -> None:
        print(fmt.format(name, *(f"{v:.4f}" for v in _report(rows).values())), flush=True)

    line("today (in-sample)", score(data, base, locomo_mod.BUDGET_TOP_K, count=count))
    for fam in family:
        grid = {"today": base, **families[fam]}
        for name, ranker in families[fam].items():
            line(name, score(data, ranker, locomo_mod.BUDGET_TOP_K, count=count))
        held, chosen = cross_validate(data, grid, locomo_mod.BUDGET_TOP_K, lambda rows: _overall(rows, 10), count)
        line(f"{fam}: 5-fold CV", held)
        print(json.dumps(chosen), flush=True)


if __name__ == "__main__":
    main()
