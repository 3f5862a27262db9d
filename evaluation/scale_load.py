"""The filler of ``bench-scale`` (:mod:`evaluation.scale_bench`): memories bulk-loaded straight into Postgres and
into the stack's own BM25 index, growing one store from size to size.

- **Vectors that look like real ones.** Uniform random unit vectors are all nearly orthogonal to each other and to
  every query, which makes any ANN index look perfect. Instead a pool of ``pool`` distinct generated chat messages
  (:mod:`evaluation.texts`, a seed of its own) is embedded once with the service's own embedder; each filler row
  mixes two pool vectors (weight 0.5-1 on the first) plus Gaussian noise (sigma ``NOISE`` a dimension) and is
  normalised. Its text is the two messages, so BM25 sees words that match the vector. Everything is seeded: the
  same sizes give the same rows.
- **Who owns them.** Row ``i`` is the heavy user's when ``floor((i + 1) * share) > floor(i * share)`` (``share`` of
  the rows, spread evenly); every other row goes to one of ``users`` users (seeded draw), user ``u`` living in tenant
  ``u % tenants``. Tenant 0 is the measured tenant and user 0 the measured normal user, so the normal user's scope
  holds its share of filler too.
- **Postgres.** Binary COPY (the vectors as float32 arrays, no text formatting) into ``memories`` with the HNSW
  index dropped; the index is then created again from its own definition, with ``maintenance_work_mem`` and
  ``max_parallel_maintenance_workers`` raised (timed), and the table VACUUM (ANALYZE)d.
- **BM25.** The new rows go through the indexer worker itself (``memos.indexer.upsert`` with ``BM25_BATCH`` ids a
  task: it reads them from Postgres, analyses them and commits once a task), so they land in exactly the index the
  search workers read, written by its one writer.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from evaluation.texts import ConversationGenerator
from memos_pipeline.config import Settings
from memos_pipeline.embedders import get_embedder

HNSW_INDEX = "ix_memories_embedding_hnsw"
SCOPE_INDEX = "ix_memories_scope"
POOL_SEED = 1001  # not the measured users' seed: no filler row repeats a measured message
NOISE = 0.01  # per dimension: a noise vector of norm ~0.2 on 384 dimensions
COPY_CHUNK = 20_000
BM25_BATCH = 5_000
FILLER_HASH = "scale-filler"  # content_hash prefix of every filler row (a shared database is cleaned by it)
# The graph must fit for the fast in-memory build: ~2.2 kB an element at 384 dimensions and m=16, so 1M rows need
# more than 2 GB (pgvector then finishes on disk, much slower); 4 GB leaves room on this 24 GB machine.
MAINTENANCE_WORK_MEM = "4GB"
PARALLEL_MAINTENANCE_WORKERS = 2
COLUMNS = (
    ("id", "uuid"),
    ("tenant_id", "uuid"),
    ("user_id", "varchar"),
    ("conversation_id", "varchar"),
    ("kind", "varchar"),
    ("memory_key", "text"),
    ("memory_value", "text"),
    ("memory_type", "varchar"),
    ("status", "varchar"),
    ("embedding", "vector"),
    ("content_hash", "varchar"),
    ("version", "int4"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)


def pg_url(cfg: Settings) -> str:
    return cfg.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


@dataclass(frozen=True)
class Shape:
    """Who owns the filler: ``users`` users over ``tenants`` tenants, and ``heavy_share`` of it one heavy user."""

    tenant_id: uuid.UUID  # the measured tenant (tenant 0)
    normal_user: str  # user 0
    heavy_user: str
    users: int = 10_000
    tenants: int = 100
    heavy_share: float = 0.2

    def tenant(self, t: int) -> uuid.UUID:
        return self.tenant_id if t == 0 else uuid.uuid5(self.tenant_id, f"scale-tenant-{t}")

    def user(self, u: int) -> str:
        return self.normal_user if u == 0 else f"filler-u{u}"


@dataclass
class Pool:
    texts: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit rows


def pool_texts(n: int) -> list[str]:
    """``n`` distinct chat messages, rendered as a window renders a turn (``Speaker: content``)."""
    gen, out, seen = ConversationGenerator(POOL_SEED), list[str](), set[str]()
    c = 0
    while len(out) < n:
        for m in gen.conversation(f"pool-{c}", 40):
            line = f"{m.get('name') or 'Assistant'}: {m['content']}"
            if line not in seen:
                seen.add(line)
                out.append(line)
        c += 1
    return out[:n]


def embed_pool(cfg: Settings, n: int) -> tuple[Pool, float]:
    """The pool, embedded with the service's embedder: (pool, seconds)."""
    texts = pool_texts(n)
    embedder = get_embedder(cfg)
    t0 = time.perf_counter()
    vectors = np.vstack([embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]).astype(np.float32)
    return Pool(texts, vectors), time.perf_counter() - t0


@dataclass
class Chunk:
    ids: list[uuid.UUID]
    rows: list[tuple[Any, ...]]


def filler_chunks(pool: Pool, shape: Shape, start: int, stop: int, seed: int = 7) -> Iterator[Chunk]:
    """Rows ``start`` .. ``stop - 1`` of the filler, in chunks of at most ``COPY_CHUNK`` (each seeded by its start)."""
    now = dt.datetime.now(dt.UTC)
    n_pool = len(pool.texts)
    for lo in range(start, stop, COPY_CHUNK):
        hi = min(stop, lo + COPY_CHUNK)
        n = hi - lo
        rng = np.random.default_rng([seed, lo])
        a, b = rng.integers(0, n_pool, n), rng.integers(0, n_pool, n)
        w = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
        vecs = w * pool.vectors[a] + (1 - w) * pool.vectors[b]
        vecs += rng.normal(0.0, NOISE, vecs.shape).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        owners = rng.integers(0, shape.users, n)
        id_bits = rng.integers(0, 2**63, (n, 2), dtype=np.int64)
        idx = np.arange(lo, hi)
        heavy = np.floor((idx + 1) * shape.heavy_share) > np.floor(idx * shape.heavy_share)
        ids: list[uuid.UUID] = []
        rows: list[tuple[Any, ...]] = []
        for k in range(n):
            i = lo + k
            rid = uuid.UUID(int=(int(id_bits[k, 0]) << 64) | int(id_bits[k, 1]), version=4)
            if heavy[k]:
                tenant, user = shape.tenant_id, shape.heavy_user
            else:
                u = int(owners[k])
                tenant, user = shape.tenant(u % shape.tenants), shape.user(u)
            text = f"{pool.texts[a[k]]}\n{pool.texts[b[k]]}"
            at = now - dt.timedelta(minutes=stop - i)
            ids.append(rid)
            conv, key = f"filler-c{i // 50}", f"{FILLER_HASH}:{i}"
            rows.append(
                (rid, tenant, user, conv, "raw", text[:60], text, "RawMemory", "activated", vecs[k], key, 1, at, at)
            )
        yield Chunk(ids, rows)


def copy_rows(cfg: Settings, chunks: Iterator[Chunk], bar: Any = None) -> list[uuid.UUID]:
    """Binary COPY of every chunk on one connection, one commit at the end: the ids, in order."""
    ids: list[uuid.UUID] = []
    with psycopg.connect(pg_url(cfg)) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            for chunk in chunks:
                sql = f"COPY memories ({', '.join(c for c, _ in COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
                with cur.copy(sql) as cp:
                    cp.set_types([t for _, t in COLUMNS])
                    for row in chunk.rows:
                        cp.write_row(row)
                ids.extend(chunk.ids)
                if bar is not None:
                    bar.update(len(chunk.ids))
        conn.commit()
    return ids


def hnsw_definition(cfg: Settings) -> str:
    with psycopg.connect(pg_url(cfg)) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (HNSW_INDEX,)).fetchone()
    if row is None:
        raise RuntimeError(f"{HNSW_INDEX} does not exist: is the database migrated?")
    return str(row[0])


def drop_hnsw(cfg: Settings) -> None:
    with psycopg.connect(pg_url(cfg), autocommit=True) as conn:
        conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")


def create_hnsw(cfg: Settings, definition: str) -> float:
    """Create the HNSW index from its definition with a large build memory and parallel workers: seconds."""
    with psycopg.connect(pg_url(cfg), autocommit=True) as conn:
        conn.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {PARALLEL_MAINTENANCE_WORKERS}")
        t0 = time.perf_counter()
        conn.execute(definition.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
        return time.perf_counter() - t0


def analyze(cfg: Settings) -> float:
    """VACUUM (ANALYZE): statistics for the planner, and the visibility map set as autovacuum would have set it in
    a store that grew over time (without it every index-only scan of fresh rows visits the heap). Seconds."""
    with psycopg.connect(pg_url(cfg), autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) memories")
        return time.perf_counter() - t0


def bm25_index(cfg: Settings, ids: list[uuid.UUID], bar: Any = None, timeout: float = 3600.0) -> float:
    """The rows ``ids`` into the stack's BM25 index through its indexer worker, ``BM25_BATCH`` a task (one commit
    each): seconds until the last task returned."""
    from memos_pipeline.celery_app import make_celery

    app = make_celery(cfg)
    try:
        t0 = time.perf_counter()
        results = [
            app.send_task(
                "memos.indexer.upsert",
                args=[{"v": 1, "memory_ids": [str(i) for i in ids[k : k + BM25_BATCH]]}],
                ignore_result=False,
            )
            for k in range(0, len(ids), BM25_BATCH)
        ]
        for k, r in enumerate(results):
            try:
                r.get(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            finally:
                r.forget()
            if bar is not None:
                bar.update(min(BM25_BATCH, len(ids) - k * BM25_BATCH))
        return time.perf_counter() - t0
    finally:
        app.close()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


@dataclass
class Sizes:
    """Bytes on disk of the table and its two search indexes, and the rows."""

    rows: int
    table_bytes: int
    hnsw_bytes: int
    scope_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        mb = 1024 * 1024
        return {
            "rows": self.rows,
            "memories_mb": round(self.table_bytes / mb, 1),
            f"{HNSW_INDEX}_mb": round(self.hnsw_bytes / mb, 1),
            f"{SCOPE_INDEX}_mb": round(self.scope_bytes / mb, 1),
            **self.extra,
        }


def relation_sizes(cfg: Settings) -> Sizes:
    with psycopg.connect(pg_url(cfg)) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM memories), pg_table_size('memories'), "
            f"pg_relation_size('{HNSW_INDEX}'), pg_relation_size('{SCOPE_INDEX}')"
        ).fetchone()
    assert row is not None
    return Sizes(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def count_rows(cfg: Settings) -> int:
    with psycopg.connect(pg_url(cfg)) as conn:
        row = conn.execute("SELECT count(*) FROM memories").fetchone()
    return int(row[0]) if row else 0


def remove_filler(cfg: Settings, shape: Shape) -> int:
    """On a database others share (the tests' session stack): mark the filler deleted, take it out of BM25 through
    the indexer, then delete the rows. Returns the rows removed."""
    tenants = [shape.tenant(t) for t in range(shape.tenants)]
    with psycopg.connect(pg_url(cfg)) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "UPDATE memories SET status = 'deleted' WHERE tenant_id = ANY(%s) AND content_hash LIKE %s"
                " RETURNING id",
                (tenants, f"{FILLER_HASH}:%"),
            )
        ]
        conn.commit()
    bm25_index(cfg, ids)  # an upsert of rows no longer activated deletes them from the index
    with psycopg.connect(pg_url(cfg)) as conn:
        conn.execute("DELETE FROM memories WHERE id = ANY(%s)", (ids,))
        conn.commit()
    return len(ids)


# ---------------------------------------------------------------- the measured users' known answers

# Facts of a vocabulary the chat generator (and so the filler) never uses, each with a question asking for it: the
# filler imitates the bulk of a store, the known answers the rare specific memory a user comes back for.
FACTS = (
    (
        "The spare key to the {place} is hidden under the {object} by the {feature}.",
        "where is the spare key to the {place} hidden",
    ),
    (
        "I lent my {object} to {friend} from the {club}; she swore to bring it back by {day}.",
        "who borrowed my {object}",
    ),
    ("At the {place} a {animal} kept stealing {food} out of the {object}.", "which animal stole {food} at the {place}"),
    (
        "My grandfather's {object} from {town} still smells faintly of {smell}.",
        "what does grandfather's {object} smell of",
    ),
    (
        "We named the {animal} that lives by the {place} {pet}, because it adores {food}.",
        "what is the {animal} by the {place} called",
    ),
    ("The {club} meets in the {place} on the first {day} of every month.", "when and where does the {club} meet"),
)
SLOTS = {
    "place": (
        "boathouse",
        "greenhouse",
        "bell tower",
        "old mill",
        "allotment shed",
        "lighthouse",
        "wine cellar",
        "tree house",
        "pottery barn",
        "ferry terminal",
        "chapel crypt",
        "bee yard",
    ),
    "object": (
        "brass telescope",
        "copper kettle",
        "accordion",
        "sewing machine",
        "microscope",
        "banjo",
        "typewriter",
        "sextant",
        "butter churn",
        "gramophone",
        "abacus",
        "harpsichord",
    ),
    "feature": ("rain barrel", "sundial", "stone owl", "broken gate", "ivy trellis", "rusty anchor"),
    "friend": ("Ingrid", "Bartholomew", "Zofia", "Ezekiel", "Marisol", "Thaddeus", "Ottilie", "Ignatius"),
    "club": (
        "chess club",
        "birdwatching society",
        "beekeepers' guild",
        "astronomy circle",
        "knitting circle",
        "model railway club",
        "choir",
        "fencing club",
    ),
    "day": ("Tuesday", "Thursday", "Saturday", "Sunday", "Monday", "Friday"),
    "animal": ("heron", "tortoise", "ferret", "badger", "magpie", "hedgehog", "otter", "goat"),
    "food": ("figs", "walnuts", "blueberries", "anchovies", "marzipan", "crackers", "plums"),
    "town": ("Tromso", "Valparaiso", "Zanzibar", "Ulaanbaatar", "Timbuktu", "Galway", "Cusco"),
    "smell": ("pipe tobacco", "cedar", "engine oil", "lavender", "peat smoke", "beeswax"),
    "pet": ("Archimedes", "Pudding", "Captain", "Mustard", "Noodle", "Socrates", "Waffles"),
}


def known_facts(user: str, n: int) -> list[tuple[str, str]]:
    """``n`` (statement, question) pairs for ``user``, distinct by question, seeded by the user."""
    import random

    rng, out, seen = random.Random(f"scale-facts:{user}"), list[tuple[str, str]](), set[str]()
    while len(out) < n:
        statement, question = rng.choice(FACTS)
        values = {k: rng.choice(v) for k, v in SLOTS.items()}
        q = question.format(**values)
        if q not in seen:
            seen.add(q)
            out.append((statement.format(**values), q))
    return out
