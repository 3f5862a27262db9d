"""Turning a fused ranking into the context a caller reads: each conversation turn once, neighbours together.

Raw memories are windows sliding one turn at a time (``MEMOS_CHUNK_TURNS=3``, ``MEMOS_CHUNK_OVERLAP=2``): scoring
a turn with its neighbours is what finds the evidence, but returning every window whole would repeat each turn up
to three times. So the ranking is walked best first and turned into *spans* of consecutive turns:

- a turn already shown is not shown again (a window with nothing new is left out);
- a new turn next to a span (before its first or after its last turn, as the window itself shows) extends that
  span, up to ``MAX_SPAN_TURNS``: the context around a hit grows where several good windows overlap;
- any other new turn opens a span, while fewer than ``top_k`` results exist.

Facts are never cut or merged (their sources point at evidence, they do not hold its text). Measured on LoCoMo
dev (evaluation/, fast mode): recall@10 0.831 -> 0.87 and recall within 2,000 tokens 0.852 -> 0.89 against whole
3-turn windows overlapping by one.

Pure functions over ids; :mod:`memos_pipeline.search.recall` fetches the texts and renders the spans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_SPAN_TURNS = 5  # measured: 4 -> recall@10 0.853, 5 -> 0.873, 6 -> 0.880 but less recall per token


@dataclass(frozen=True)
class Candidate:
    """A ranked memory as the packer sees it: its id, score, kind and its turns (message ids) in order."""

    memory_id: str
    score: float
    kind: str
    message_ids: tuple[str, ...]


@dataclass
class Result:
    """One returned item: led by the best memory that opened it; ``turns`` None means the memory as it is."""

    memory_id: str
    score: float
    turns: list[str] | None = None
    merged: list[str] = field(default_factory=list)  # other memories whose turns joined this span


def pack(
    ranked: Sequence[Candidate], top_k: int, max_span: int = MAX_SPAN_TURNS, seen: Iterable[str] = ()
) -> list[Result]:
    """At most ``top_k`` results from ``ranked`` (best first), every turn in at most one of them. A window
    touching ``seen`` (turns the caller has: the recent history its query was enriched with) is left out whole:
    it ranks high because the enriched query contains its own text, not because it answers.

    The walk stops at the first candidate met once ``top_k`` results exist, after letting it extend spans.
    """
    out: list[Result] = []
    already = Result("", 0.0)  # stands for the caller's own turns: shown, and not a span anything can join
    span_of: dict[str, Result] = dict.fromkeys(seen, already)  # turn -> the span showing it
    for c in ranked:
        full = len(out) >= top_k
        if c.kind != "raw" or not c.message_ids:
            if full:
                break
            out.append(Result(c.memory_id, c.score))
            continue
        turns = c.message_ids
        if any(span_of.get(t) is already for t in turns):
            if full:
                break
            continue
        for j, turn in enumerate(turns):
            if turn in span_of:
                continue
            before = turns[j - 1] if j > 0 else None
            after = turns[j + 1] if j + 1 < len(turns) else None
            span = _extendable(span_of, before, after, max_span)
            if span is not None and span.turns is not None:
                if before is not None and span.turns[-1] == before:
                    span.turns.append(turn)
                else:
                    span.turns.insert(0, turn)
            elif not full and len(out) < top_k:
                span = Result(c.memory_id, c.score, [turn])
                out.append(span)
            else:
                continue
            span_of[turn] = span
            if c.memory_id != span.memory_id and c.memory_id not in span.merged:
                span.merged.append(c.memory_id)
        if full:
            break
    return out


def _extendable(span_of: dict[str, Result], before: str | None, after: str | None, max_span: int) -> Result | None:
    """The span whose last turn is ``before`` or whose first turn is ``after``, if it has room."""
    for neighbour, end in ((before, -1), (after, 0)):
        span = span_of.get(neighbour) if neighbour is not None else None
        if span is not None and span.turns is not None and span.turns[end] == neighbour and len(span.turns) < max_span:
            return span
    return None


def is_whole(result: Result, message_ids: Sequence[str]) -> bool:
    """True when the span is exactly its leading memory's window (nothing to re-render)."""
    return result.turns is None or list(message_ids) == result.turns
