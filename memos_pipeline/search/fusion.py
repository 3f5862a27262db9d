"""Fusing ranked candidate lists (dense, BM25, graph...) into one ranking. Pure functions.

Two methods, picked by ``MEMOS_FUSION`` and compared on the LoCoMo harness:
- ``rrf``: reciprocal rank fusion, score = sum_i w_i / (k + rank_i); ignores score magnitudes.
- ``weighted``: a weighted mean of per-list scores. Cosine similarities are already on one scale across queries
  and are used as they are; unbounded scores (BM25) are scaled to [0, 1] by the list's best score. Keeps the
  information that a hit is far ahead of the next one, which RRF throws away; the result stays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

RRF_K = 60


def rrf(
    rankings: Mapping[str, Sequence[str]], weights: Mapping[str, float] | None = None, k: int = RRF_K
) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name, ids in rankings.items():
        w = (weights or {}).get(name, 1.0)
        for rank, doc_id in enumerate(ids):
            scores[doc_id] = scores.get(doc_id, 0.0) + w / (k + rank + 1)
    return scores


def max_normalise(scores: Mapping[str, float]) -> dict[str, float]:
    """Scale non-negative scores so that the best is 1.0 (an empty or all-zero list stays as it is)."""
    top = max(scores.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(scores, 0.0)
    return {k: max(v, 0.0) / top for k, v in scores.items()}


def weighted(
    score_lists: Mapping[str, Mapping[str, float]],
    weights: Mapping[str, float],
    normalise: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """Weighted mean of the lists' scores (lists named in ``normalise`` max-scaled first); a candidate missing
    from a list scores 0 there."""
    total = sum(weights.get(name, 1.0) for name in score_lists) or 1.0
    fused: dict[str, float] = {}
    for name, scores in score_lists.items():
        w = weights.get(name, 1.0) / total
        # Lists used as they are (cosine) are clamped to [0, 1]: an anti-correlated memory is irrelevant, not
        # negatively relevant, and the fused score must stay a share of the maximum.
        for doc_id, s in (max_normalise(scores) if name in normalise else scores).items():
            fused[doc_id] = fused.get(doc_id, 0.0) + w * min(max(s, 0.0), 1.0)
    return fused


def semantic_gate(cosine: float, floor: float, full: float) -> float:
    """0 at or below ``floor``, 1 at or above ``full``, linear between: how much lexical evidence a memory with this
    cosine to the query may receive."""
    if cosine >= full:
        return 1.0
    if cosine <= floor or full <= floor:
        return 0.0
    return (cosine - floor) / (full - floor)


def gated(
    dense: Mapping[str, float],
    lexical: Mapping[str, float],
    weights: Mapping[str, float],
    floor: float,
    full: float,
    exact: Collection[str] = (),
) -> dict[str, float]:
    """:func:`weighted` over a dense list (cosines, as they are) and a lexical one (max-scaled), the lexical score of
    each candidate multiplied by :func:`semantic_gate` of its cosine. ``dense`` must hold the cosine of every
    lexical candidate it has a vector for (the search reads it with the row). A candidate without one (a window
    whose vector is not written yet) keeps its lexical score ungated: there is no cosine to judge it by, and
    hiding it would make a fresh memory unfindable. So does a candidate in ``exact`` (it holds every word asked
    for): a name, code or id looked up by itself means nothing to the model, and the gate would hide the one
    memory that has it."""
    wd, wl = weights.get("dense", 1.0), weights.get("bm25", 1.0)
    total = (wd + wl) or 1.0
    # Two passes over plain dicts (the search runs this on a few hundred candidates per query: keep it cheap).
    fused = {doc_id: wd * min(max(c, 0.0), 1.0) / total for doc_id, c in dense.items()}
    for doc_id, s in max_normalise(lexical).items():
        c = dense.get(doc_id)
        gate = 1.0 if c is None or doc_id in exact else semantic_gate(c, floor, full)
        if gate > 0.0:
            fused[doc_id] = fused.get(doc_id, 0.0) + wl * min(s, 1.0) * gate / total
        else:
            fused.setdefault(doc_id, 0.0)
    return fused


def top(scores: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` best (id, score) pairs; ties broken by id so that results are deterministic."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
