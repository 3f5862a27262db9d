"""Graph recall (``FAST_GRAPH``): memories linked by the rare entities they share, built at index time, no LLM.

Index time (:func:`link_memories`, called by the indexer): each memory's entities are extracted by rule
(:func:`extract_entities`: capitalised names and phrases, quoted titles, numbers, Chinese proper nouns, a fact's
tags) and stored in ``memory_entities`` (one row per memory and entity, per tenant and user: the user's
entity -> document-frequency table). A new memory is linked to the same user's memories that share entities with
it, weighted by the cosine of their IDF-weighted entity sets (:func:`build_edges`); entities in more than a few
percent of the user's memories are hubs (the other speaker's name in a two-person chat) and carry nothing. Edges
are undirected, stored once as (smaller id, larger id) in ``memory_edges`` with kind ``entity``, and upserted on
their natural key, so a redelivered task converges to the same rows.

Search time (:func:`expand`): the neighbours of the top fused hits join the candidates with
``parent score * DECAY * edge weight``, read in one query through the search's own tenant/user/status scope.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jieba.posseg
from sqlalchemy import Column, MetaData, Select, String, Table, Text, and_, case, func, or_, select
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.orm import Session

from memos_pipeline.search import fusion
from memos_pipeline.storage.models import Memory, MemoryEdge
from memos_pipeline.text.tokenizer import ENGLISH_STOPWORDS

EDGE_KIND = "entity"
EDGE_CAP = 8  # edges a new memory keeps: its strongest; a hub-free memory rarely has more worth following
HUB_MIN_DF = 12  # below this many memories an entity is never a hub (a 3-turn window counts a mention 3 times)
HUB_SHARE = 0.05  # ... above it, an entity in more than this share of the user's memories is one
TOP_N = 5  # fused hits whose neighbours are followed
PER_PARENT = 3  # neighbours followed per hit, strongest edges first
DECAY = 0.8  # a neighbour's score relative to its parent's, times the edge weight
MAX_NEIGHBOUR_ROWS = 200  # bound on the search-time query whatever the graph looks like

# Table of migration 0005; models.py should grow the matching class (the report names it).
memory_entities = Table(
    "memory_entities",
    MetaData(),
    Column("memory_id", UUID(as_uuid=True), primary_key=True),
    Column("entity", Text, primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("user_id", String(256), nullable=False),
)

# ---------------------------------------------------------------- extraction (pure)

_DATE_LINE = re.compile(r"^\[[^\]\n]*\]\s*$", re.M)
_SPEAKER = re.compile(r"^([^:\n\[\]]{1,64}):[ \t]", re.M)
_QUOTED = re.compile(r"[\"“「『《]([^\"“”「」『』《》\n]{2,80})[\"”」』》]")
_WORD = r"[A-Z][\w'’\-]*"
_CAP_PHRASE = re.compile(rf"\b{_WORD}(?:(?:\s+(?:of|the|de|da|del|la|le|van|von)){{0,2}}\s+{_WORD})*")
_NUMBER = re.compile(r"(?<![\w.])\d{2,}(?:[.,]\d+)?(?![\w])")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_SENTENCE_END = re.compile(r"[.!?。！？:;\"“(]\s*$")
# jieba part-of-speech flags of proper nouns: person, place, organisation, other proper noun.
_CJK_PROPER = ("nr", "ns", "nt", "nz")
# Capitalised only because they start a sentence or are shouted: greetings, fillers, pronoun contractions.
_COMMON = frozenset(
    """yeah yes yep no nope ok okay oh wow hey hi hello thanks thank sure great awesome cool nice good well really
    absolutely definitely totally sounds lol haha omg congrats congratulations sorry please also anyway maybe
    actually honestly btw bye love happy glad amazing wonderful right true exactly indeed let lets sometimes
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
    september october november december today tomorrow yesterday""".split()
)
_ARTICLES = ("the ", "a ", "an ", "my ", "our ", "your ")


def _norm(phrase: str) -> str:
    s = phrase.replace("’", "'").strip(" '-.,!?;:").lower()
    if s.endswith("'s"):
        s = s[:-2]
    for art in _ARTICLES:
        if s.startswith(art):
            s = s[len(art) :]
    return s.strip()


def _is_common(word: str) -> bool:
    w = _norm(word).split("'")[0]
    return len(w) < 2 or w in ENGLISH_STOPWORDS or w in _COMMON


def speakers_of(text: str) -> set[str]:
    """The speaker labels of a rendered window (``Name: content`` lines), lowercased, with their single words:
    speaker names are in every turn of their chat, never a link between two memories of it."""
    out: set[str] = set()
    for m in _SPEAKER.finditer(text):
        name = _norm(m.group(1))
        out.add(name)
        out.update(w for w in name.split() if len(w) > 1)
    return out


def _english(line: str) -> Iterable[tuple[str, bool]]:
    """(phrase, sure): ``sure`` is False for a lone capitalised word opening a sentence ("Keep it up!", "Last
    week..."): most are ordinary words, and a name among them is still caught where it is not first."""
    for m in _CAP_PHRASE.finditer(line):
        words = m.group(0).split()
        initial = m.start() == 0 or bool(_SENTENCE_END.search(line[: m.start()]))
        while words and _is_common(words[0]):  # "Yeah Paris" -> Paris, "The Eiffel Tower" -> Eiffel Tower
            words = words[1:]
            initial = False
        while words and _is_common(words[-1]):
            words = words[:-1]
        if words:
            yield " ".join(words), not (initial and len(words) == 1)
    for m in _QUOTED.finditer(line):
        yield m.group(1), True
    for n in _NUMBER.findall(line):
        yield n, True


def _chinese(line: str) -> Iterable[str]:
    for run in _CJK_RUN.findall(line):
        for pair in jieba.posseg.cut(run):
            if len(pair.word) >= 2 and pair.flag.startswith(_CJK_PROPER):
                yield pair.word


def extract_entities(text: str, tags: Sequence[str] = (), exclude: Iterable[str] = ()) -> frozenset[str]:
    """Normalised entities of a memory's text (date lines and speaker labels left out) plus its tags; ``exclude``:
    names never to count (the speakers of the user's chats)."""
    banned = speakers_of(text) | {_norm(x) for x in exclude}
    body = _DATE_LINE.sub("", text)
    body = _SPEAKER.sub("", body)
    found: set[str] = set()
    for line in body.splitlines():
        for raw, sure in (*_english(line), *((w, True) for w in _chinese(line))):
            e = _norm(raw)
            # An unsure word that the text also capitalises mid-sentence is in ``found`` through that mention.
            if sure and len(e) >= 2 and e not in banned and e not in ENGLISH_STOPWORDS:
                found.add(e)
    found.update(t for t in (_norm(t) for t in tags) if len(t) >= 2 and t not in banned)
    return frozenset(found)


# ---------------------------------------------------------------- edges (pure)


@dataclass(frozen=True)
class Edge:
    src: str  # the smaller id of the two: an entity edge is undirected and stored once
    dst: str
    weight: float


def hub_limit(n_memories: int) -> float:
    return max(float(HUB_MIN_DF), HUB_SHARE * n_memories)


def idf_weights(df: Mapping[str, int], n_memories: int) -> dict[str, float]:
    """IDF of every entity that is not a hub; hubs (and entities no other memory has) are left out."""
    limit = hub_limit(n_memories)
    n = max(n_memories, max(df.values(), default=0))
    return {e: math.log((n + 1) / c) for e, c in df.items() if 1 < c <= limit}


def build_edges(
    new: Mapping[str, frozenset[str]],
    known: Mapping[str, frozenset[str]],
    idf: Mapping[str, float],
    sources: Mapping[str, frozenset[str]] | None = None,
    cap: int = EDGE_CAP,
) -> list[Edge]:
    """Edges from each ``new`` memory to the ``known`` ones (which may include the new ones) sharing a weighted
    entity: weight = cosine of the two IDF-weighted entity sets, the ``cap`` strongest per new memory. Memories
    with a message in common (overlapping windows) are not linked: packing already joins them."""
    sources = sources or {}
    vecs = {m: {e: idf[e] for e in ents if e in idf} for m, ents in {**known, **new}.items()}
    norms = {m: math.sqrt(sum(w * w for w in v.values())) for m, v in vecs.items()}
    holders: dict[str, set[str]] = defaultdict(set)
    for m, v in vecs.items():
        for e in v:
            holders[e].add(m)
    edges: dict[tuple[str, str], float] = {}
    for a, va in vecs.items():
        if a not in new or not va:
            continue
        scored: list[tuple[float, str]] = []
        for b in set().union(*(holders[e] for e in va)) - {a}:
            if sources.get(a, frozenset()) & sources.get(b, frozenset()):
                continue
            dot = sum(w * vecs[b][e] for e, w in va.items() if e in vecs[b])
            scored.append((dot / (norms[a] * norms[b]), b))
        for w, b in sorted(scored, key=lambda x: (-x[0], x[1]))[:cap]:
            key = (min(a, b), max(a, b))
            edges[key] = max(edges.get(key, 0.0), round(w, 6))
    return [Edge(s, d, w) for (s, d), w in sorted(edges.items())]


# ---------------------------------------------------------------- index time (DB)


def link_ingest(session: Session, ingest_id: uuid.UUID) -> int:
    """Entities and edges for the activated memories of one ingest (the indexer's hook); returns edges written."""
    ids = session.execute(select(Memory.id).where(Memory.ingest_id == ingest_id)).scalars().all()
    return link_memories(session, list(ids))


def link_memories(session: Session, memory_ids: Sequence[uuid.UUID]) -> int:
    """Entities and edges for the given memories (activated ones; each only within its own tenant and user)."""
    if not memory_ids:
        return 0
    rows = session.execute(
        select(
            Memory.id,
            Memory.tenant_id,
            Memory.user_id,
            Memory.kind,
            Memory.memory_key,
            Memory.memory_value,
            Memory.tags,
            Memory.source_message_ids,
        ).where(Memory.id.in_(memory_ids), Memory.status == "activated")
    ).all()
    groups: dict[tuple[uuid.UUID, str], list[Any]] = defaultdict(list)
    for r in rows:
        groups[(r.tenant_id, r.user_id)].append(r)
    return sum(_link_user(session, tenant_id, user_id, rs) for (tenant_id, user_id), rs in groups.items())


def _link_user(session: Session, tenant_id: uuid.UUID, user_id: str, rows: list[Any]) -> int:
    speakers = set().union(*(speakers_of(r.memory_value) for r in rows if r.kind == "raw"))
    new = {
        str(r.id): extract_entities(
            r.memory_value if r.kind == "raw" else f"{r.memory_key}\n{r.memory_value}", r.tags or (), speakers
        )
        for r in rows
    }
    values = [
        {"memory_id": uuid.UUID(m), "entity": e, "tenant_id": tenant_id, "user_id": user_id}
        for m, ents in new.items()
        for e in ents
    ]
    if values:
        # executemany (rows as parameters): one cached statement, where .values(rows) compiled anew each time.
        session.execute(insert(memory_entities).on_conflict_do_nothing(), values)
    scope = and_(memory_entities.c.tenant_id == tenant_id, memory_entities.c.user_id == user_id)
    n = session.execute(
        select(func.count())
        .select_from(Memory)
        .where(Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.status == "activated")
    ).scalar_one()
    df = _doc_freq(session, scope, set().union(*new.values()))
    keep = list(idf_weights(df, n))
    if not keep:
        return 0
    # The same user's activated memories holding a non-hub entity of the batch: at most len(keep) * hub_limit.
    holders = (
        select(memory_entities.c.memory_id)
        .join(Memory, Memory.id == memory_entities.c.memory_id)
        .where(scope, memory_entities.c.entity.in_(keep), Memory.status == "activated")
        .distinct()
    )
    known: dict[str, set[str]] = defaultdict(set)
    for mid, ent in session.execute(
        select(memory_entities.c.memory_id, memory_entities.c.entity).where(memory_entities.c.memory_id.in_(holders))
    ):
        known[str(mid)].add(ent)
    sources = {
        str(mid): frozenset(str(x) for x in srcs or ())
        for mid, srcs in session.execute(
            select(Memory.id, Memory.source_message_ids).where(Memory.id.in_([uuid.UUID(m) for m in known]))
        )
    }
    df.update(_doc_freq(session, scope, set().union(*known.values()) - set(df)))
    edges = build_edges(new, {m: frozenset(e) for m, e in known.items()}, idf_weights(df, n), sources)
    if edges:
        stmt = insert(MemoryEdge)
        edge_rows = [
            {
                "tenant_id": tenant_id,
                "src_id": uuid.UUID(e.src),
                "dst_id": uuid.UUID(e.dst),
                "kind": EDGE_KIND,
                "weight": e.weight,
            }
            for e in edges
        ]
        # Upsert: a redelivery recomputes the same pairs; later memories may have made an entity commoner.
        upsert = stmt.on_conflict_do_update(
            constraint="uq_memory_edges_src_dst_kind", set_={"weight": stmt.excluded.weight}
        )
        session.execute(upsert, edge_rows)
    return len(edges)


def _doc_freq(session: Session, scope: Any, entities: set[str]) -> dict[str, int]:
    if not entities:
        return {}
    q = (
        select(memory_entities.c.entity, func.count())
        .where(scope, memory_entities.c.entity.in_(entities))
        .group_by(memory_entities.c.entity)
    )
    return {e: int(c) for e, c in session.execute(q)}


# ---------------------------------------------------------------- search time


def expand(
    session: Session,
    scoped: Select[Any],
    ranked: Mapping[str, float],
    *,
    top_n: int = TOP_N,
    per_parent: int = PER_PARENT,
    decay: float = DECAY,
) -> tuple[dict[str, float], dict[str, Memory]]:
    """``ranked`` with the entity neighbours of its ``top_n`` best added (or raised) to ``parent * decay *
    weight``, and the neighbours' rows. ``scoped``: the search's ``select(Memory)`` with its tenant/user/status
    filters, so a neighbour is only ever what the search itself may return. One query."""
    parents = dict(fusion.top(ranked, top_n))
    if not parents:
        return dict(ranked), {}
    ids = [uuid.UUID(p) for p in parents]
    e = MemoryEdge
    parent = case((Memory.id == e.dst_id, e.src_id), else_=e.dst_id).label("parent")
    q = (
        scoped.add_columns(parent, e.weight)
        .join(e, or_(and_(e.src_id.in_(ids), e.dst_id == Memory.id), and_(e.dst_id.in_(ids), e.src_id == Memory.id)))
        .where(e.kind == EDGE_KIND)
        .order_by(e.weight.desc())
        .limit(MAX_NEIGHBOUR_ROWS)
    )
    out = dict(ranked)
    found: dict[str, Memory] = {}
    taken: dict[str, int] = defaultdict(int)
    for row in session.execute(q):
        m, p, w = row[0], str(row.parent), float(row.weight)
        if taken[p] >= per_parent:
            continue
        taken[p] += 1
        mid = str(m.id)
        found[mid] = m
        out[mid] = max(out.get(mid, 0.0), parents[p] * decay * w)
    return out, found
