"""Fusing ranked candidate lists (dense, BM25, graph...) into one ranking. Pure functions.

Two methods, picked by ``MEMOS_FUSION`` and compared on the LoCoMo harness:
- ``rrf``: reciprocal rank fusion, score = sum_i w_i / (k + rank_i); ignores score magnitudes.
- ``weighted``: a weighted mean of per-list scores. Cosine similarities are already on one scale across queries
  and are used as they are; unbounded scores (BM25) are scaled to [0, 1] by the list's best score. Keeps the
  information that a hit is far ahead of the next one, which RRF throws away; the result stays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def top(scores: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` best (id, score) pairs; ties broken by id so that results are deterministic."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
