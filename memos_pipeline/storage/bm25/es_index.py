"""Elasticsearch BM25 backend (official client, 8.x API), chosen when ``MEMOS_ES_URL`` is set.

Layout (names in ``es_bodies.EsNames``): one physical index per generation, ``<base>-gen-<n>``, created from one
index template; searches go through the read alias, live writes through the write alias, and while a re-index
builds the next generation it carries the build alias and live writes go there as well (dual-write). The swap is
one ``update_aliases`` call, atomic for every reader. Documents are routed by user.

Refresh: a live upsert or delete returns only once it is searchable (``refresh="wait_for"``), which is the
contract every backend honours (tests/integration/test_bm25_contract.py). ``wait_for`` rather than
``refresh=true``: it rides on the next scheduled refresh (at most ``refresh_interval``, 1 s, later) instead of
forcing a new tiny segment per request, which under a steady ingest rate would cost merges and heap; concurrent
writers share one refresh. The price is up to a second per indexer call, so an ES indexer runs with several
threads (no single-writer rule here). Writes into a generation being built use no refresh at all: its refresh is
off (nobody searches it, and ``wait_for`` would wait for a refresh that never comes) until the swap refreshes it
explicitly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from elasticsearch import BadRequestError, Elasticsearch, NotFoundError, helpers

from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Query, Generations
from memos_pipeline.storage.bm25 import es_bodies as bodies

BULK_CHUNK = 1000
COPY_TIMEOUT_S = 3600


class EsBulkError(RuntimeError):
    pass


class EsGeneration:
    """One generation through its alias (write alias: current; build alias: building): batch writes, exact counts.

    Aliases, not concrete index names, with ``require_alias``: a write after the generation was dropped fails
    instead of auto-creating a stray index of that name.
    """

    def __init__(self, es: Elasticsearch, alias: str, *, refresh: bool | str) -> None:
        self.es, self.alias, self._refresh = es, alias, refresh

    def upsert(self, docs: list[Bm25Doc]) -> None:
        if docs:
            _bulk(self.es, bodies.upsert_actions(self.alias, docs), refresh=self._refresh)

    def delete(self, ids: list[str], *, routing: Sequence[str] | None = None) -> None:
        if not ids:
            return
        pairs = (
            list(zip(ids, routing, strict=True)) if routing is not None else _find_routing(self.es, [self.alias], ids)
        )
        if pairs:
            actions = bodies.delete_actions(self.alias, [i for i, _ in pairs], [r for _, r in pairs])
            _bulk(self.es, actions, refresh=self._refresh, ignore_status=(404,))

    def search(self, query: Bm25Query) -> list[tuple[str, float]]:
        return _search(self.es, self.alias, query)

    def count(self, tenant_id: str | None = None) -> int:
        self.es.indices.refresh(index=self.alias)
        return int(self.es.count(index=self.alias, query=bodies.count_query(tenant_id))["count"])


def _bulk(
    es: Elasticsearch,
    actions: list[dict[str, Any]],
    *,
    refresh: bool | str,
    ignore_status: tuple[int, ...] = (),
    missing_ok: bool = False,
) -> None:
    """Bulk-helper write; per-item failures raise (a missing target alias is fine when ``missing_ok``)."""
    _, errors = helpers.bulk(
        es,
        actions,
        chunk_size=BULK_CHUNK,
        max_retries=3,
        raise_on_error=False,
        ignore_status=ignore_status,
        refresh=refresh,
        require_alias=True,
    )
    failed = []
    for err in errors if isinstance(errors, list) else []:
        item = next(iter(err.values()))
        if missing_ok and (item.get("error") or {}).get("type") == "index_not_found_exception":
            continue  # the build alias went away (swap or abort) between our check and this write
        failed.append(item)
    if failed:
        raise EsBulkError(f"{len(failed)} bulk item(s) failed, first: {failed[0]}")


def _find_routing(es: Elasticsearch, indices: list[str], ids: Sequence[str]) -> list[tuple[str, str]]:
    """(id, routing) of the documents that exist: for deletes whose caller did not know the users."""
    es.indices.refresh(index=indices, ignore_unavailable=True)  # searching by id is not real-time; make it so
    try:
        resp = es.search(index=indices, ignore_unavailable=True, **bodies.ids_query(ids))
    except NotFoundError:
        return []
    return sorted({(h["_id"], h["_routing"]) for h in resp["hits"]["hits"] if h.get("_routing") is not None})


def _search(es: Elasticsearch, index: str, query: Bm25Query) -> list[tuple[str, float]]:
    body = bodies.search_body(query)
    if body is None:
        return []
    try:
        resp = es.search(index=index, **body)
    except NotFoundError:  # nothing was ever indexed here
        return []
    return [(h["_id"], float(h["_score"])) for h in resp["hits"]["hits"]]


class EsIndex:
    """The deployment's BM25 index in Elasticsearch; the indexer (``writer=True``) also manages generations."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        writer: bool = False,
        shards: int = 1,
        replicas: int = 1,
        client: Elasticsearch | None = None,
    ) -> None:
        self.es = client or Elasticsearch(url, request_timeout=30, retry_on_timeout=True, max_retries=3)
        self.names = bodies.EsNames.for_prefix(prefix)
        self._writer, self._shards, self._replicas = writer, shards, replicas
        self._ensured = False

    # ------------------------------------------------------------ setup

    def ensure(self) -> None:
        """Template and a first generation behind both aliases, once per process (idempotent and race-safe)."""
        if self._ensured:
            return
        self.es.indices.put_index_template(
            **bodies.index_template(self.names, shards=self._shards, replicas=self._replicas)
        )
        if not self.es.indices.exists_alias(name=self.names.read_alias):
            try:
                self.es.indices.create(
                    index=self.names.index(1),
                    mappings=bodies.mappings(),
                    settings=bodies.index_settings(shards=self._shards, replicas=self._replicas),
                    aliases={self.names.read_alias: {}, self.names.write_alias: {"is_write_index": True}},
                )
            except BadRequestError as exc:  # another process created it first: its aliases came with it
                if exc.error != "resource_already_exists_exception":
                    raise
        self._ensured = True

    def _aliases(self) -> tuple[dict[str, list[int]], list[int]]:
        """alias -> generations carrying it, and every generation index that exists."""
        resp = self.es.indices.get_alias(index=self.names.pattern)
        out: dict[str, list[int]] = {self.names.read_alias: [], self.names.build_alias: []}
        gens: list[int] = []
        for index, body in resp.items():
            gen = self.names.generation_of(index)
            if gen is None:
                continue
            gens.append(gen)
            for alias in body.get("aliases", {}):
                if alias in out:
                    out[alias].append(gen)
        return out, gens

    # ------------------------------------------------------------ live reads and writes

    def search(self, query: Bm25Query) -> list[tuple[str, float]]:
        return _search(self.es, self.names.read_alias, query)

    def count(self, tenant_id: str | None = None) -> int:
        try:
            return int(self.es.count(index=self.names.read_alias, query=bodies.count_query(tenant_id))["count"])
        except NotFoundError:
            return 0

    def _building(self) -> bool:
        # Asked on every write, not cached: a writer that missed the start of a build would leave holes in it.
        return bool(self.es.indices.exists_alias(name=self.names.build_alias))

    def upsert(self, docs: list[Bm25Doc]) -> None:
        if not docs:
            return
        self.ensure()
        if self._building():
            _bulk(self.es, bodies.upsert_actions(self.names.build_alias, docs), refresh=False, missing_ok=True)
        _bulk(self.es, bodies.upsert_actions(self.names.write_alias, docs), refresh="wait_for")

    def delete(self, ids: list[str], *, routing: Sequence[str] | None = None) -> None:
        if not ids:
            return
        self.ensure()
        building = self._building()
        targets = [self.names.write_alias, *([self.names.build_alias] if building else [])]
        pairs = list(zip(ids, routing, strict=True)) if routing is not None else _find_routing(self.es, targets, ids)
        if not pairs:
            return
        doc_ids, users = [i for i, _ in pairs], [r for _, r in pairs]
        if building:
            _bulk(
                self.es,
                bodies.delete_actions(self.names.build_alias, doc_ids, users),
                refresh=False,
                ignore_status=(404,),
                missing_ok=True,
            )
        _bulk(
            self.es,
            bodies.delete_actions(self.names.write_alias, doc_ids, users),
            refresh="wait_for",
            ignore_status=(404,),
        )

    # ------------------------------------------------------------ generations

    def generations(self) -> Generations:
        self.ensure()
        aliases, _ = self._aliases()
        read, build = aliases[self.names.read_alias], aliases[self.names.build_alias]
        if not read:
            raise RuntimeError(f"alias {self.names.read_alias} points nowhere")
        return Generations(read[0], build[0] if build else None)

    def next_generation(self) -> int:
        self.ensure()
        _, gens = self._aliases()
        return max(gens, default=0) + 1

    def begin_generation(self, gen: int) -> None:
        current = self.generations()
        if current.building == gen:
            return
        if current.building is not None:
            raise RuntimeError(f"generation {current.building} is being built; abort it first")
        if gen <= current.current:
            raise ValueError(f"generation {gen} is not newer than the current {current.current}")
        try:
            self.es.indices.create(
                index=self.names.index(gen),
                mappings=bodies.mappings(),
                settings=bodies.index_settings(shards=self._shards, replicas=self._replicas, building=True),
            )
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise
        self.es.indices.update_aliases(
            actions=[{"add": {"index": self.names.index(gen), "alias": self.names.build_alias}}]
        )

    def generation(self, gen: int) -> EsGeneration:
        current = self.generations()
        if gen == current.current:
            return EsGeneration(self.es, self.names.write_alias, refresh="wait_for")
        if gen == current.building:
            return EsGeneration(self.es, self.names.build_alias, refresh=False)
        raise KeyError(f"generation {gen} is neither current ({current.current}) nor building")

    def copy_into(self, gen: int, *, exclude_tenant: str) -> int:
        if gen != self.generations().building:
            raise KeyError(f"generation {gen} is not being built")
        body = bodies.copy_body(self.names.read_alias, self.names.index(gen), exclude_tenant)
        resp = self.es.options(request_timeout=COPY_TIMEOUT_S).reindex(
            **body, wait_for_completion=True, refresh=False, slices="auto"
        )
        return int(resp.get("created", 0)) + int(resp.get("updated", 0))

    def activate_generation(self, gen: int) -> int | None:
        current = self.generations()
        if gen == current.current:
            return None
        if gen != current.building:
            raise KeyError(f"generation {gen} is not being built (building: {current.building})")
        index = self.names.index(gen)
        self.es.indices.put_settings(index=index, settings=bodies.live_settings(replicas=self._replicas))
        self.es.cluster.health(index=index, wait_for_status="yellow", timeout="60s")  # primaries allocated
        self.es.indices.refresh(index=index)
        self.es.indices.update_aliases(
            actions=bodies.swap_actions(self.names, index, self.names.index(current.current))
        )
        return current.current

    def drop_generation(self, gen: int) -> None:
        current = self.generations()
        if gen in (current.current, current.building):
            raise ValueError(f"generation {gen} is in use")
        self.es.indices.delete(index=self.names.index(gen), ignore_unavailable=True)

    def abort_generation(self, gen: int) -> None:
        current = self.generations()
        if gen == current.building:
            self.es.indices.update_aliases(
                actions=[{"remove": {"index": self.names.index(gen), "alias": self.names.build_alias}}]
            )
        if gen != current.current:
            self.es.indices.delete(index=self.names.index(gen), ignore_unavailable=True)

    def delete_everything(self) -> None:
        """Every generation and the template (for tests; ``reindex`` never calls it). Indices by name: clusters
        refuse wildcard deletes by default (``action.destructive_requires_name``)."""
        _, gens = self._aliases()
        for gen in gens:
            self.es.indices.delete(index=self.names.index(gen), ignore_unavailable=True)
        with contextlib.suppress(NotFoundError):
            self.es.indices.delete_index_template(name=self.names.template)
