"""Elasticsearch request bodies as pure functions: names, the index template, bulk actions, queries.

Nothing here talks to a server, so every body is unit-tested (tests/unit/test_es_bodies.py); ``es_index`` sends
them. The text field holds our analyzer's tokens joined by spaces, so its analyzer only splits on whitespace (no
lowercasing, stemming or stopwords: ``memos_pipeline.text.tokenizer`` did that, identically for every backend).
Documents are routed by user: a user's documents live on one shard, and a search (always for one user) asks
only that shard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Query

ANALYZER = "memos_whitespace"
SIMILARITY = "memos_bm25"
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True)
class EsNames:
    """Every name of one deployment's index: generations ``<base>-gen-<n>`` behind a read, a write and (during a
    re-index) a build alias."""

    base: str

    @classmethod
    def for_prefix(cls, prefix: str) -> EsNames:
        # MEMOS_QUEUE_PREFIX separates deployments on one broker; the same prefix separates them on one cluster.
        clean = _UNSAFE.sub("-", prefix.lower()).strip("-._")
        return cls(f"memos-bm25-{clean}" if clean else "memos-bm25")

    @property
    def read_alias(self) -> str:
        return f"{self.base}-read"

    @property
    def write_alias(self) -> str:
        return f"{self.base}-write"

    @property
    def build_alias(self) -> str:
        return f"{self.base}-build"

    @property
    def template(self) -> str:
        return self.base

    @property
    def pattern(self) -> str:
        return f"{self.base}-gen-*"

    def index(self, gen: int) -> str:
        return f"{self.base}-gen-{gen}"

    def generation_of(self, index: str) -> int | None:
        prefix = f"{self.base}-gen-"
        tail = index[len(prefix) :] if index.startswith(prefix) else ""
        return int(tail) if tail.isdigit() else None


def mappings() -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "dynamic": "strict",  # a typo in a field name fails loudly instead of growing the mapping
        "_routing": {"required": True},  # every write names its user: no document on the wrong shard
        "properties": {
            "tenant": keyword,
            "user": keyword,
            "conv": keyword,
            "kind": keyword,
            # Term frequencies and norms (BM25 needs both), no positions: we never run phrase queries.
            "text": {"type": "text", "analyzer": ANALYZER, "similarity": SIMILARITY, "index_options": "freqs"},
        },
    }


def index_settings(*, shards: int, replicas: int, building: bool = False) -> dict[str, Any]:
    """Settings of one generation. While it is being built nobody searches it: no replicas and no periodic
    refresh (fewer, larger segments, faster bulk); ``live_settings`` restores both before the swap."""
    return {
        "number_of_shards": shards,
        "number_of_replicas": 0 if building else replicas,
        "refresh_interval": "-1" if building else "1s",
        "analysis": {"analyzer": {ANALYZER: {"type": "custom", "tokenizer": "whitespace", "filter": []}}},
        # BM25 with the parameters tantivy uses (k1 1.2, b 0.75), spelled out: scores mean the same thing.
        "similarity": {SIMILARITY: {"type": "BM25", "k1": 1.2, "b": 0.75}},
    }


def live_settings(*, replicas: int) -> dict[str, Any]:
    return {"number_of_replicas": replicas, "refresh_interval": "1s"}


def index_template(names: EsNames, *, shards: int, replicas: int) -> dict[str, Any]:
    """Keyword arguments of ``indices.put_index_template``: every generation index gets these mappings."""
    return {
        "name": names.template,
        "index_patterns": [names.pattern],
        "priority": 200,
        "template": {"settings": index_settings(shards=shards, replicas=replicas), "mappings": mappings()},
        "meta": {"owner": "memos-pipeline", "what": "BM25 over pre-tokenised text"},
    }


def source(doc: Bm25Doc) -> dict[str, str]:
    return {
        "tenant": doc.tenant_id,
        "user": doc.user_id,
        "conv": doc.conversation_id,
        "kind": doc.kind,
        "text": doc.text,
    }


def upsert_actions(index: str, docs: Iterable[Bm25Doc]) -> list[dict[str, Any]]:
    """Bulk-helper actions: ``index`` (create or replace by id), routed by user."""
    return [
        {"_op_type": "index", "_index": index, "_id": d.id, "_routing": d.user_id, "_source": source(d)} for d in docs
    ]


def delete_actions(index: str, ids: Sequence[str], routing: Sequence[str]) -> list[dict[str, Any]]:
    if len(ids) != len(routing):
        raise ValueError(f"{len(ids)} ids but {len(routing)} routing values")
    return [{"_op_type": "delete", "_index": index, "_id": i, "_routing": r} for i, r in zip(ids, routing, strict=True)]


def scope_filter(tenant_id: str, user_id: str, conversation_id: str | None, kinds: Sequence[str]) -> list[dict]:
    clauses: list[dict[str, Any]] = [{"term": {"tenant": tenant_id}}, {"term": {"user": user_id}}]
    if conversation_id is not None:
        clauses.append({"term": {"conv": conversation_id}})
    if kinds:
        clauses.append({"terms": {"kind": list(kinds)}})
    return clauses


def search_body(query: Bm25Query) -> dict[str, Any] | None:
    """Keyword arguments of ``search`` (None: no tokens, nothing to find). The scope is in filter context (it
    only selects, scoring 0), each distinct token is one ``term`` clause of a disjunction: the score is the BM25
    sum over matched tokens, as in tantivy."""
    terms = sorted(set(query.tokens))
    if not terms:
        return None
    return {
        "query": {
            "bool": {
                "filter": scope_filter(query.tenant_id, query.user_id, query.conversation_id, query.kinds),
                "should": [{"term": {"text": t}} for t in terms],
                "minimum_should_match": 1,
            }
        },
        "size": query.limit,
        "routing": query.user_id,
        "source": False,
        "track_total_hits": False,
    }


def count_query(tenant_id: str | None) -> dict[str, Any]:
    return {"term": {"tenant": tenant_id}} if tenant_id is not None else {"match_all": {}}


def ids_query(ids: Sequence[str]) -> dict[str, Any]:
    """Find documents by id when their routing is unknown (searches every shard)."""
    return {"query": {"ids": {"values": list(ids)}}, "size": len(ids), "source": False}


def copy_body(source_index: str, dest_index: str, exclude_tenant: str) -> dict[str, Any]:
    """Keyword arguments of ``reindex``: everything but one tenant, keeping each document's routing. ``create``
    plus ``conflicts: proceed``: a live write that reached the new index first is newer, and is kept."""
    return {
        "source": {"index": source_index, "query": {"bool": {"must_not": [{"term": {"tenant": exclude_tenant}}]}}},
        "dest": {"index": dest_index, "op_type": "create"},
        "conflicts": "proceed",
    }


def swap_actions(names: EsNames, new_index: str, old_index: str | None) -> list[dict[str, Any]]:
    """One atomic ``update_aliases``: reads and writes move to ``new_index`` together; the build alias goes."""
    actions: list[dict[str, Any]] = []
    if old_index is not None and old_index != new_index:
        actions.append({"remove": {"index": old_index, "alias": names.read_alias}})
        actions.append({"remove": {"index": old_index, "alias": names.write_alias}})
    actions.append({"add": {"index": new_index, "alias": names.read_alias}})
    actions.append({"add": {"index": new_index, "alias": names.write_alias, "is_write_index": True}})
    actions.append({"remove": {"index": new_index, "alias": names.build_alias, "must_exist": False}})
    return actions
