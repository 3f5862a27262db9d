"""Retrieval metrics for the offline harnesses (LoCoMo, PrefEval). Pure functions, no services.

A search result is represented by its ``sources`` (the client message ids of the turns it was built from, e.g.
``["D3:4", "D3:5", "D3:6"]``); a ranked list of results is a sequence of such lists, best first. Evidence ids and
sources are compared after :func:`normalize_evidence_id`, so ``"D30:05"`` and ``"D30:5"`` are the same turn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

Ranked = Sequence[Sequence[str]]

# "D3:5", and the malformed forms seen in LoCoMo: "D:11:26", "D30:05", several ids in one string ("D8:6; D9:17").
_DIA_ID = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")


def normalize_evidence_id(raw: str) -> list[str]:
    """Every dialog id found in ``raw``, canonical (``D<session>:<turn>``, no leading zeros); [] when none."""
    return [f"D{int(s)}:{int(t)}" for s, t in _DIA_ID.findall(str(raw))]


def normalize_evidence(raw: Iterable[object]) -> list[str]:
    """Canonical evidence ids of a question, in order, duplicates removed (``"D"`` alone yields nothing)."""
    out: list[str] = []
    for item in raw:
        for dia_id in normalize_evidence_id(str(item)):
            if dia_id not in out:
                out.append(dia_id)
    return out


def session_of(dia_id: str) -> str | None:
    """``"D3:5"`` -> ``"D3"``; None for a string that holds no dialog id."""
    ids = normalize_evidence_id(dia_id)
    return ids[0].split(":", 1)[0] if ids else None


def _ids(sources: Iterable[str]) -> set[str]:
    """The canonical dialog ids among a result's sources (other sources, e.g. uuids, are kept verbatim)."""
    out: set[str] = set()
    for s in sources:
        norm = normalize_evidence_id(s)
        out.update(norm if norm else [s])
    return out


def _need(evidence: Sequence[str]) -> set[str]:
    if not evidence:
        raise ValueError("a question without evidence ids has no recall")
    return set(evidence)


def found_at_k(evidence: Sequence[str], ranked: Ranked, k: int) -> set[str]:
    """The evidence ids present among the sources of the top ``k`` results."""
    want = _need(evidence)
    seen: set[str] = set()
    for sources in ranked[:k]:
        seen |= _ids(sources)
    return want & seen


def recall_at_k(evidence: Sequence[str], ranked: Ranked, k: int) -> float:
    """Turn-level evidence recall: the share of the evidence ids found in the top ``k`` results' sources."""
    return len(found_at_k(evidence, ranked, k)) / len(_need(evidence))


def hit_at_k(evidence: Sequence[str], ranked: Ranked, k: int) -> float:
    """1.0 when any evidence id is among the top ``k`` results' sources, else 0.0."""
    return 1.0 if found_at_k(evidence, ranked, k) else 0.0


def session_recall_at_k(evidence: Sequence[str], ranked: Ranked, k: int) -> float:
    """Share of the evidence sessions (``D<n>``) among the sessions of the top ``k`` results' sources."""
    want = {s for s in (session_of(e) for e in _need(evidence)) if s}
    if not want:
        raise ValueError("evidence ids hold no session")
    seen = {s for sources in ranked[:k] for s in (session_of(x) for x in sources) if s}
    return len(want & seen) / len(want)


def first_rank(evidence: Sequence[str], ranked: Ranked) -> dict[str, int | None]:
    """Per evidence id, the 1-based rank of the first result holding it (None: not returned at all)."""
    out: dict[str, int | None] = dict.fromkeys(evidence)
    for rank, sources in enumerate(ranked, 1):
        for e in _ids(sources):
            if e in out and out[e] is None:
                out[e] = rank
    return out


def ndcg_at_k(evidence: Sequence[str], ranked: Ranked, k: int = 10) -> float:
    """NDCG@k with binary relevance: a result is relevant when its sources hold an evidence id.

    The ideal ranking has ``max(#evidence ids, #relevant results in the top k)`` relevant results (capped at k)
    on top: overlapping windows can put one evidence turn into two results, and a perfect ranking then still
    scores 1.0; a question whose evidence turns sit in separate windows needs all of them near the top."""
    want = _need(evidence)
    rels = [1.0 if _ids(sources) & want else 0.0 for sources in ranked[:k]]
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rels))
    n_ideal = min(k, max(len(want), int(sum(rels))))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(n_ideal))
    return dcg / idcg if idcg else 0.0


def budget_depth(token_counts: Sequence[int], budget: int) -> int:
    """How many leading results fit in ``budget`` tokens: results are taken in rank order until the next one
    would exceed the budget (then the walk stops; a later, smaller result is not squeezed in)."""
    used = 0
    for n, tokens in enumerate(token_counts):
        if used + tokens > budget:
            return n
        used += tokens
    return len(token_counts)


def recall_within_budget(evidence: Sequence[str], ranked: Ranked, token_counts: Sequence[int], budget: int) -> float:
    """Evidence recall over the results that fit in a context of ``budget`` tokens (see :func:`budget_depth`)."""
    if len(token_counts) != len(ranked):
        raise ValueError("one token count per result")
    return recall_at_k(evidence, ranked, budget_depth(token_counts, budget))


def context_tokens(token_counts: Sequence[int], k: int) -> int:
    """Size of the returned context at ``k``: the summed tokens of the top ``k`` results."""
    return int(sum(token_counts[:k]))


def mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else None


def latency_summary(
    samples_ms: Sequence[float], extra: Sequence[str] = ("mean",), digits: int = 2
) -> dict[str, float | int | None]:
    """p50/p99 in milliseconds (linear interpolation), the ``extra`` reductions (``mean``, ``max``) and the count."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    stats = {"p50": lambda: np.percentile(arr, 50), "p99": lambda: np.percentile(arr, 99)}
    stats |= {name: getattr(arr, name) for name in extra}
    out: dict[str, float | int | None] = {k: round(float(f()), digits) if len(arr) else None for k, f in stats.items()}
    return {**out, "n": len(arr)}
