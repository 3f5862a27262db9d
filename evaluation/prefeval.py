"""PrefEval proxy (no LLM): after a stated preference and N filler turns, does the question retrieve it?

For each sampled explicit-preference topic item (``explicit_preference/<topic>.json``: preference, question) and
each filler count, a fresh user gets, through the real API: one add with the preference as a user message (client
id ``pref``), then the first N filler turns of ``filtered_inter_turns.json`` (the benchmark's inter-turn chats,
concatenated in file order; a turn is a user + assistant pair, as in PrefEval) in adds of ``PER_ADD`` messages;
once all are searchable, the question is searched in each mode and scored: recall@k = share of questions whose
top k memories hold ``pref`` among their sources. With an LLM configured the benchmark's own generation check
could run on top; this proxy needs none.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evaluation import metrics
from evaluation.locomo import add_all, check_modes, clean_text, own_stack, search
from memos_pipeline.config import Settings

PREF_ID = "pref"
CONVERSATION_ID = "prefeval"
PER_ADD = 50
# Ten items (half the topic files): ~6,200 messages to ingest with 0/10/300 fillers, a few minutes on an idle
# 2-core machine (20 items took 33 minutes under a load average of ~10).
DEFAULT_TOPICS = 10
DEFAULT_FILLERS = (0, 10, 300)
DEFAULT_KS = (5,)
DEFAULT_MODES = ("bm25", "dense", "fast")
CLIENT_THREADS = 4


@dataclass(frozen=True)
class TopicItem:
    topic: str
    index: int
    preference: str
    question: str


def load_topics(data: Path) -> list[TopicItem]:
    """Every explicit-preference item, topics in name order, items in file order."""
    files = sorted((Path(data) / "explicit_preference").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no explicit_preference/*.json under {data}")
    return [
        TopicItem(f.stem, i, clean_text(str(d["preference"])), clean_text(str(d["question"])))
        for f in files
        for i, d in enumerate(json.loads(f.read_text(encoding="utf-8")))
    ]


def load_fillers(data: Path) -> list[dict[str, Any]]:
    """The inter-turn chats as one message list (file order), control characters replaced, client ids ``f<n>``."""
    convs = json.loads((Path(data) / "filtered_inter_turns.json").read_text(encoding="utf-8"))
    msgs = [m for c in convs for m in c["conversation"]]
    return [
        {"role": m["role"], "content": clean_text(str(m["content"])).strip() or "(empty)", "id": f"f{i:04d}"}
        for i, m in enumerate(msgs)
    ]


def sample_topics(items: Sequence[TopicItem], n: int, seed: int) -> list[TopicItem]:
    """``n`` items spread over the topics: round robin over the topic files, each file shuffled by ``seed``."""
    by_topic: dict[str, list[TopicItem]] = {}
    for it in items:
        by_topic.setdefault(it.topic, []).append(it)
    rng = random.Random(seed)
    for group in by_topic.values():
        rng.shuffle(group)
    out: list[TopicItem] = []
    depth = 0
    while len(out) < min(n, len(items)):
        for group in by_topic.values():
            if depth < len(group) and len(out) < n:
                out.append(group[depth])
        depth += 1
    return out


def filler_messages(fillers: Sequence[dict[str, Any]], turns: int) -> list[dict[str, Any]]:
    """The first ``turns`` filler turns (user + assistant pairs)."""
    if 2 * turns > len(fillers):
        raise ValueError(f"{turns} filler turns asked for, the data has {len(fillers) // 2}")
    return [dict(m) for m in fillers[: 2 * turns]]


def run_prefeval(
    settings: Settings,
    data: Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    fillers: Sequence[int] = DEFAULT_FILLERS,
    topics: int = DEFAULT_TOPICS,
    modes: Sequence[str] = DEFAULT_MODES,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ingest, search, score: (the result, per-question records with the ranked results)."""
    check_modes(modes)
    all_items = load_topics(data)
    items = sample_topics(all_items, topics, seed)
    filler_pool = load_fillers(data)
    for n in fillers:
        filler_messages(filler_pool, n)  # fail before starting anything
    top_k = max(ks)
    bars: dict[str, Any] = {"file": sys.stderr, "disable": not progress}
    cases = [(it, n) for it in items for n in fillers]
    by_mode: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    with own_stack(settings, "prefeval") as h:
        api, run = h.api, h.run

        def user(it: TopicItem, n: int) -> str:
            return f"prefeval-{run}-{it.topic}-{it.index}-f{n}"

        def adds(it: TopicItem, n: int) -> list[tuple[str, str, list[dict[str, Any]]]]:
            msgs = filler_messages(filler_pool, n)
            pref = [{"role": "user", "content": it.preference, "id": PREF_ID}]  # the preference first
            chunks = [pref] + [msgs[i : i + PER_ADD] for i in range(0, len(msgs), PER_ADD)]
            return [(user(it, n), CONVERSATION_ID, m) for m in chunks]

        t0 = time.perf_counter()
        timeout = 600 + 0.5 * sum(2 * n + 1 for _, n in cases)
        ingest_ids = add_all(api, [adds(it, n) for it, n in cases], timeout, progress, CLIENT_THREADS)
        ingest_s = time.perf_counter() - t0

        for mode in modes:
            ranks: dict[int, list[int | None]] = {n: [] for n in fillers}
            lat: dict[int, list[float]] = {n: [] for n in fillers}
            for it, n in tqdm(cases, desc=f"search {mode}", unit="q", **bars):
                ms, out = search(api, user(it, n), it.question, top_k, mode)
                ranked = [list(m.get("sources") or []) for m in out["memory_detail_list"]]
                rank = metrics.first_rank([PREF_ID], ranked)[PREF_ID]
                ranks[n].append(rank)
                lat[n].append(ms)
                records.append(
                    {
                        "mode": mode,
                        "topic": it.topic,
                        "index": it.index,
                        "fillers": n,
                        "preference": it.preference,
                        "question": it.question,
                        "rank": rank,
                        "results": [
                            {
                                "sources": m.get("sources"),
                                "relativity": m.get("relativity"),
                                "text": (m.get("memory_value") or "")[:160],
                            }
                            for m in out["memory_detail_list"]
                        ],
                    }
                )
            by_mode[mode] = {
                str(n): {
                    "n": len(ranks[n]),
                    "recall@k": {
                        str(k): round(sum(1 for r in ranks[n] if r is not None and r <= k) / len(ranks[n]), 4)
                        for k in ks
                    },
                    "mean_rank": metrics.mean(float(r) for r in ranks[n] if r is not None),
                    "latency_ms": metrics.latency_summary(lat[n]),
                }
                for n in fillers
            }
    result = {
        "config": {
            "data": str(data),
            "topics_available": len(all_items),
            "topics_sampled": len(items),
            "seed": seed,
            "topic_files": sorted({it.topic for it in items}),
            "fillers": list(fillers),
            "ks": list(ks),
            "modes": list(modes),
            "top_k": top_k,
            "messages_per_filler_add": PER_ADD,
            "filler_turns_available": len(filler_pool) // 2,
        },
        "ingest": {
            "users": len(cases),
            "adds": len(ingest_ids),
            "messages": sum(2 * n + 1 for _, n in cases),
            "seconds": round(ingest_s, 2),
        },
        "modes": by_mode,
        "notes": [
            f"{len(items)} of {len(all_items)} explicit-preference items, round robin over "
            f"{len({it.topic for it in items})} topic files (seed {seed}); --topics changes the sample size.",
            "recall@k: share of questions whose top k memories have the preference message (client id 'pref') "
            "among their sources; mean_rank: mean 1-based rank of the first such memory, where found.",
            "A filler turn is a user + assistant pair (as in PrefEval's inter_turns): 300 turns = 600 messages.",
            "The preference is its own add; the first filler windows start with it (the chunker stitches up to "
            "MEMOS_CHUNK_OVERLAP earlier turns of the conversation), so it is in more than one memory.",
        ],
    }
    return result, records
