"""BM25 keyword index behind one interface; backends rank the tokens of ``memos_pipeline.text.tokenizer``.

The embedded backend (tantivy) serves a single machine and the tests; the Elasticsearch backend (production) plugs
in behind the same ``Bm25Index`` protocol and is chosen by ``MEMOS_ES_URL``.

Both keep the index in *generations*: searches read the current one; a batch re-index (``memos_pipeline.jobs.reindex``)
builds the next one beside it while live writes go to both, then swaps atomically (a pointer file for tantivy,
aliases for Elasticsearch) and drops the old one. ``Bm25Generations`` is that admin side, used only by the indexer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from memos_pipeline.config import Settings


@dataclass(frozen=True)
class Bm25Doc:
    id: str
    tenant_id: str
    user_id: str
    conversation_id: str
    kind: str  # raw | fact | preference
    text: str  # already analyzed: space-separated tokens


@dataclass(frozen=True)
class Bm25Query:
    tenant_id: str
    user_id: str
    tokens: tuple[str, ...]
    conversation_id: str | None = None
    kinds: tuple[str, ...] = ()
    limit: int = 20


class Bm25Index(Protocol):
    def upsert(self, docs: list[Bm25Doc]) -> None:
        """Insert or replace documents by id; visible to searches of this backend when this returns (tantivy
        readers in other processes: within their reload interval, a few ms)."""
        ...

    def delete(self, ids: list[str], *, routing: Sequence[str] | None = None) -> None:
        """Delete by id. ``routing``: each id's user id, same order; backends that route by user need it and
        without it first look the documents up (slower)."""
        ...

    def search(self, query: Bm25Query) -> list[tuple[str, float]]:
        """(id, score) best first, only within the query's tenant and user; the score is the text match alone."""
        ...

    def count(self, tenant_id: str | None = None) -> int: ...


@dataclass(frozen=True)
class Generations:
    current: int  # the generation searches read
    building: int | None = None  # being built by a re-index: live writes go here too


class Bm25Generations(Bm25Index, Protocol):
    """The indexer's side: the live index plus the generation machinery of a batch re-index.

    Every method is idempotent, so that a redelivered task (worker killed) converges.
    """

    def generations(self) -> Generations: ...

    def next_generation(self) -> int:
        """A generation number above every generation that exists in this index."""
        ...

    def begin_generation(self, gen: int) -> None:
        """Create generation ``gen`` (empty) and from now on send every live upsert/delete to it as well."""
        ...

    def generation(self, gen: int) -> Bm25Index:
        """The current or building generation alone: batch writes and exact counts (it refreshes first)."""
        ...

    def copy_into(self, gen: int, *, exclude_tenant: str) -> int:
        """Copy every document of the current generation except ``exclude_tenant``'s into ``gen``."""
        ...

    def activate_generation(self, gen: int) -> int | None:
        """Atomically make ``gen`` the one searches read and live writes go to. Returns the previous
        generation, or None if ``gen`` already was current."""
        ...

    def drop_generation(self, gen: int) -> None:
        """Delete a generation that is neither current nor building (no-op if it is gone already)."""
        ...

    def abort_generation(self, gen: int) -> None:
        """Stop building ``gen`` and delete it; the current generation is untouched."""
        ...


@functools.cache
def _tantivy(path: str, writer: bool) -> Bm25Generations:
    from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex

    return TantivyIndex(path, writer=writer)


@functools.cache
def _es(url: str, prefix: str, writer: bool) -> Bm25Generations:
    from memos_pipeline.storage.bm25.es_index import EsIndex

    return EsIndex(url, prefix=prefix, writer=writer)


def get_generations(settings: Settings) -> Bm25Generations:
    """The indexer's handle (one per process). Tantivy allows one writer per index: only the indexer calls this."""
    if settings.es_url:
        return _es(settings.es_url, settings.queue_prefix, True)
    return _tantivy(str(settings.bm25_dir), True)


def get_index(settings: Settings, *, writer: bool = False) -> Bm25Index:
    """The process's BM25 index: Elasticsearch when ``MEMOS_ES_URL`` is set, else the embedded tantivy index.
    Only the indexer asks for ``writer=True``; readers follow generation swaps on their own."""
    if writer:
        return get_generations(settings)
    if settings.es_url:
        return _es(settings.es_url, settings.queue_prefix, False)
    return _tantivy(str(settings.bm25_dir), False)
