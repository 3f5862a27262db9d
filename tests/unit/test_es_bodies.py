"""The Elasticsearch request bodies: pure functions, checked without a server."""

from __future__ import annotations

import json

import pytest

from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Query
from memos_pipeline.storage.bm25 import es_bodies as b
from memos_pipeline.text.tokenizer import tokenize

pytestmark = pytest.mark.unit

NAMES = b.EsNames.for_prefix("test1a2b.")
DOC = Bm25Doc("m1", "t1", "alice", "conv-1", "fact", "北京 flight lisbon")


def roundtrip(body: object) -> object:
    """Bodies go over the wire as JSON: they must survive it unchanged."""
    return json.loads(json.dumps(body, ensure_ascii=False))


@pytest.mark.parametrize(
    ("prefix", "base"),
    [
        ("", "memos-bm25"),
        ("test1a2b.", "memos-bm25-test1a2b"),
        ("Prod EU/1", "memos-bm25-prod-eu-1"),
        ("..x..", "memos-bm25-x"),
    ],
)
def test_names_are_valid_index_names(prefix: str, base: str) -> None:
    names = b.EsNames.for_prefix(prefix)
    assert names.base == base
    for name in (names.read_alias, names.write_alias, names.build_alias, names.index(3)):
        assert name == name.lower() and not name.startswith(("-", "_", "+")) and " " not in name
    assert len({names.read_alias, names.write_alias, names.build_alias, names.index(1)}) == 4


def test_generation_numbers_round_trip_and_foreign_indices_are_ignored() -> None:
    assert NAMES.generation_of(NAMES.index(17)) == 17
    assert NAMES.generation_of("memos-bm25-gen-3") is None  # another deployment's
    assert NAMES.generation_of(f"{NAMES.base}-gen-x") is None
    assert NAMES.pattern == f"{NAMES.base}-gen-*"


def test_mapping_is_strict_routed_and_whitespace_bm25() -> None:
    m = b.mappings()
    assert m["dynamic"] == "strict"
    assert m["_routing"] == {"required": True}
    text = m["properties"]["text"]
    assert (text["type"], text["analyzer"], text["similarity"]) == ("text", b.ANALYZER, b.SIMILARITY)
    assert text["index_options"] == "freqs"  # frequencies and norms for BM25; no positions needed
    assert {m["properties"][f]["type"] for f in ("tenant", "user", "conv", "kind")} == {"keyword"}


def test_settings_analyzer_only_splits_on_whitespace() -> None:
    s = b.index_settings(shards=3, replicas=2)
    analyzer = s["analysis"]["analyzer"][b.ANALYZER]
    assert analyzer == {"type": "custom", "tokenizer": "whitespace", "filter": []}  # our tokens, untouched
    assert s["similarity"][b.SIMILARITY] == {"type": "BM25", "k1": 1.2, "b": 0.75}
    assert (s["number_of_shards"], s["number_of_replicas"], s["refresh_interval"]) == (3, 2, "1s")


def test_a_generation_being_built_has_no_replicas_and_no_refresh_until_live() -> None:
    s = b.index_settings(shards=1, replicas=2, building=True)
    assert (s["number_of_replicas"], s["refresh_interval"]) == (0, "-1")
    assert b.live_settings(replicas=2) == {"number_of_replicas": 2, "refresh_interval": "1s"}


def test_template_covers_every_generation() -> None:
    t = roundtrip(b.index_template(NAMES, shards=1, replicas=1))
    assert isinstance(t, dict)
    assert t["name"] == NAMES.template and t["index_patterns"] == [NAMES.pattern]
    assert t["template"]["mappings"] == b.mappings()
    assert t["template"]["settings"]["analysis"]["analyzer"][b.ANALYZER]["tokenizer"] == "whitespace"


def test_upsert_actions_are_routed_by_user_and_keyed_by_id() -> None:
    [action] = b.upsert_actions("alias-w", [DOC])
    assert action == {
        "_op_type": "index",
        "_index": "alias-w",
        "_id": "m1",
        "_routing": "alice",
        "_source": {"tenant": "t1", "user": "alice", "conv": "conv-1", "kind": "fact", "text": "北京 flight lisbon"},
    }
    assert set(action["_source"]) == set(b.mappings()["properties"])  # strict mapping: exactly these fields


def test_delete_actions_need_a_routing_per_id() -> None:
    acts = b.delete_actions("alias-w", ["m1", "m2"], ["alice", "bob"])
    assert [(a["_op_type"], a["_id"], a["_routing"]) for a in acts] == [
        ("delete", "m1", "alice"),
        ("delete", "m2", "bob"),
    ]
    assert all("_source" not in a for a in acts)
    with pytest.raises(ValueError, match="routing"):
        b.delete_actions("alias-w", ["m1", "m2"], ["alice"])


def test_search_scope_is_in_filter_context_and_text_alone_scores() -> None:
    q = Bm25Query(
        "t1", "alice", ("lisbon", "flight", "lisbon"), conversation_id="conv-1", kinds=("fact", "raw"), limit=7
    )
    body = roundtrip(b.search_body(q))
    assert isinstance(body, dict)
    boolq = body["query"]["bool"]
    assert set(boolq) == {"filter", "should", "minimum_should_match"}  # no "must": filters never score
    assert boolq["filter"] == [
        {"term": {"tenant": "t1"}},
        {"term": {"user": "alice"}},
        {"term": {"conv": "conv-1"}},
        {"terms": {"kind": ["fact", "raw"]}},
    ]
    # Distinct tokens, one term clause each (like tantivy), so a repeated query word does not count twice.
    assert boolq["should"] == [{"term": {"text": "flight"}}, {"term": {"text": "lisbon"}}]
    assert boolq["minimum_should_match"] == 1
    assert (body["size"], body["routing"], body["source"], body["track_total_hits"]) == (7, "alice", False, False)


def test_search_without_optional_filters_and_with_cjk_tokens() -> None:
    tokens = tuple(tokenize("我住在北京"))
    body = b.search_body(Bm25Query("t1", "alice", tokens))
    assert body is not None
    assert body["query"]["bool"]["filter"] == [{"term": {"tenant": "t1"}}, {"term": {"user": "alice"}}]
    assert {"term": {"text": "北京"}} in body["query"]["bool"]["should"]


def test_no_tokens_means_no_query() -> None:
    assert b.search_body(Bm25Query("t1", "alice", ())) is None


def test_count_and_ids_queries() -> None:
    assert b.count_query(None) == {"match_all": {}}
    assert b.count_query("t1") == {"term": {"tenant": "t1"}}
    assert b.ids_query(["a", "b"]) == {"query": {"ids": {"values": ["a", "b"]}}, "size": 2, "source": False}


def test_copy_excludes_one_tenant_and_never_overwrites_newer_live_writes() -> None:
    body = b.copy_body(NAMES.read_alias, NAMES.index(4), "t9")
    assert body["source"] == {"index": NAMES.read_alias, "query": {"bool": {"must_not": [{"term": {"tenant": "t9"}}]}}}
    assert body["dest"] == {"index": NAMES.index(4), "op_type": "create"}
    assert body["conflicts"] == "proceed"


def test_swap_moves_read_and_write_together_and_drops_the_build_alias() -> None:
    actions = b.swap_actions(NAMES, NAMES.index(5), NAMES.index(4))
    assert {"remove": {"index": NAMES.index(4), "alias": NAMES.read_alias}} in actions
    assert {"remove": {"index": NAMES.index(4), "alias": NAMES.write_alias}} in actions
    assert {"add": {"index": NAMES.index(5), "alias": NAMES.read_alias}} in actions
    assert {"add": {"index": NAMES.index(5), "alias": NAMES.write_alias, "is_write_index": True}} in actions
    assert {"remove": {"index": NAMES.index(5), "alias": NAMES.build_alias, "must_exist": False}} in actions
    first_run = b.swap_actions(NAMES, NAMES.index(1), None)
    assert all("remove" not in a or a["remove"]["alias"] == NAMES.build_alias for a in first_run)
