"""Second-stage evidence without an LLM: pseudo-relevance feedback restricted to rare terms. Pure functions.

A multi-hop question ("What do Melanie's kids like?") names one entity; the turns that answer it often name
another one (the kids' names, a place, a hobby) that the first hits mention and the question does not. The top
``seed`` hits of the fused ranking give the *feedback terms*: their analyser tokens (:mod:`memos_pipeline.text.
tokenizer`) that the query lacks and that are rare among the candidates (inverse document frequency over the
candidate pool, so speaker names and the date line, present in every window, weigh nothing). Every other candidate
then gains ``weight`` times the IDF share of the feedback terms it holds. The bonus only reorders the candidates
the two channels already returned (dense and BM25, 4x top_k each): no second query.

An experiment of the replay harness (``evaluation/replay.py variants``), not part of the service: its best setting
gained +0.004 R@10 in 5-fold cross-validation by conversation on LoCoMo dev, under the +0.005 bar for shipping.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from functools import lru_cache

from memos_pipeline.text.tokenizer import tokenize

_CAPITALISED = re.compile(r"(?<![.!?:\n]\s)(?<!^)\b[A-Z][a-z]+(?:'s)?\b")


@lru_cache(maxsize=16384)
def entity_terms(text: str) -> frozenset[str]:
    """Tokens of the capitalised words of ``text`` not opening a sentence or a line: names, places, titles."""
    return frozenset(tokenize(" ".join(_CAPITALISED.findall(text))))


@lru_cache(maxsize=16384)
def terms(text: str) -> frozenset[str]:
    """The distinct analyser tokens of ``text`` (cached by text: the same windows come back query after query)."""
    return frozenset(tokenize(text))


def feedback_terms(
    ranked: list[str],
    text_of: Callable[[str], str | None],
    query: str,
    *,
    seed: int,
    n_terms: int,
    entities: bool = False,
) -> tuple[dict[str, float], dict[str, frozenset[str]]]:
    """The ``n_terms`` rarest tokens of the top ``seed`` ids of ``ranked`` that are not in ``query``, each with its
    IDF over all of ``ranked`` (``entities``: only tokens of capitalised words, :func:`entity_terms`); and every candidate's token set (to score them)."""
    toks: dict[str, frozenset[str]] = {}
    for i in ranked:
        text = text_of(i)
        if text is not None:
            toks[i] = terms(text)
    n = len(toks)
    if n < 2 or seed <= 0:
        return {}, toks
    df: Counter[str] = Counter()
    for t in toks.values():
        df.update(t)
    asked = terms(query)
    seeds = [i for i in ranked[:seed] if i in toks]
    pool = {w for i in seeds for w in toks[i]} - asked
    if entities:
        pool &= {w for i in seeds if (text := text_of(i)) is not None for w in entity_terms(text)}
    # Only terms rarer than the seeds themselves: a term every seed shares with half the pool is no lead.
    idf = {w: math.log((n + 1) / (df[w] + 0.5)) for w in pool if df[w] <= max(2, n // 10)}
    best = sorted(idf.items(), key=lambda kv: (-kv[1], kv[0]))[:n_terms]
    return dict(best), toks


def boost(
    scores: Mapping[str, float],
    text_of: Callable[[str], str | None],
    query: str,
    *,
    weight: float,
    seed: int = 3,
    n_terms: int = 20,
    entities: bool = False,
) -> dict[str, float]:
    """``scores`` with each candidate outside the top ``seed`` raised by ``weight`` times the IDF-weighted share of
    the feedback terms (:func:`feedback_terms`) it holds; the seeds keep their scores."""
    if weight <= 0 or not scores:
        return dict(scores)
    ranked = [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]
    fb, toks = feedback_terms(ranked, text_of, query, seed=seed, n_terms=n_terms, entities=entities)
    total = sum(fb.values())
    out = dict(scores)
    if total <= 0:
        return out
    for i in ranked[seed:]:
        t = toks.get(i)
        if t:
            share = sum(v for w, v in fb.items() if w in t) / total
            if share > 0:
                out[i] += weight * share
    return out
