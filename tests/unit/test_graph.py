"""Graph recall's pure parts: entity extraction, hub suppression, edge weights and caps."""

from __future__ import annotations

import math

from memos_pipeline.search.graph import EDGE_CAP, HUB_MIN_DF, build_edges, extract_entities, hub_limit, idf_weights

WINDOW = """[1:56 pm on 8 May, 2023]
Caroline: Hey Mel! Yeah, I went to the LGBTQ support group and read "Becoming Nicole" by Amy Ellis Nutt.
Melanie: Painting is my thing. I moved from Sweden 4 years ago, in 2019. The Eiffel Tower was great.
Caroline: Keep it up! Last week was long. Sweden must be cold."""


def test_extracts_names_titles_and_numbers_but_not_speakers_dates_or_sentence_starts() -> None:
    ents = extract_entities(WINDOW)
    assert {"amy ellis nutt", "becoming nicole", "sweden", "eiffel tower", "2019", "lgbtq"} <= ents
    # Speaker labels (and their mentions), the date line, greetings and capitalised sentence starts are not entities.
    assert not ents & {"caroline", "melanie", "may", "1:56", "hey", "yeah", "painting", "i", "the", "keep", "last"}


def test_extraction_of_chinese_proper_nouns_and_titles() -> None:
    ents = extract_entities("用户: 我昨天去了广州旅游，见到了张伟和阿里巴巴的同事，读了《三体》")
    assert {"广州", "张伟", "三体"} <= ents
    assert not ents & {"我", "昨天", "同事", "用户"}


def test_tags_and_excluded_names() -> None:
    ents = extract_entities("Caroline adopted a dog named Biscuit.", tags=["Pets", "dog"], exclude=["Caroline"])
    assert ents == {"biscuit", "pets", "dog"}


def test_names_joined_by_and_are_two_entities_and_titles_lose_punctuation() -> None:
    ents = extract_entities('I walked Luna and Oliver, then reread "Finding Home."')
    assert ents == {"luna", "oliver", "finding home"}


def test_hubs_and_singletons_carry_no_weight() -> None:
    n = 1000
    df = {"caroline": 400, "sweden": 6, "solo": 1, "edge": int(hub_limit(n))}
    idf = idf_weights(df, n)
    assert set(idf) == {"sweden", "edge"}  # 400 of 1000 memories: a hub; in one memory only: links nothing
    assert idf["sweden"] > idf["edge"] > 0
    assert math.isclose(idf["sweden"], math.log((n + 1) / 6))
    # A small user never has hubs below the floor: two memories sharing a name are linked from the start.
    assert set(idf_weights({"x": HUB_MIN_DF}, 3)) == {"x"}


def test_rare_shared_entities_weigh_more_than_common_ones() -> None:
    known = {
        "a": frozenset({"sweden", "ikea"}),
        "b": frozenset({"sweden"}),  # shares the rarer entity with a
        "c": frozenset({"ikea"}),
    }
    idf = idf_weights({"sweden": 2, "ikea": 9}, 100)
    edges = {(e.src, e.dst): e.weight for e in build_edges({"a": known["a"]}, known, idf)}
    assert set(edges) == {("a", "b"), ("a", "c")}
    assert edges[("a", "b")] > edges[("a", "c")] > 0
    assert all(0 < w <= 1 for w in edges.values())


def test_hub_only_overlap_links_nothing() -> None:
    known = {f"m{i}": frozenset({"caroline"}) for i in range(50)}
    assert build_edges({"m0": known["m0"]}, known, idf_weights({"caroline": 50}, 50)) == []


def test_cap_keeps_the_strongest_and_edges_are_stored_once() -> None:
    # "new" shares "rare" with r1 only and "common" with everyone: r1 must survive the cap.
    known = {f"k{i:02d}": frozenset({"common"}) for i in range(EDGE_CAP + 5)}
    known["r1"] = frozenset({"rare", "common"})
    new = {"new": frozenset({"rare", "common"})}
    idf = idf_weights({"rare": 2, "common": len(known) + 1}, 1000)
    edges = build_edges(new, {**known, **new}, idf)
    assert len(edges) == EDGE_CAP
    assert edges == sorted(edges, key=lambda e: (e.src, e.dst))
    assert ("new", "r1") in {(e.src, e.dst) for e in edges}
    assert all(e.src < e.dst for e in edges)
    # Two new memories linking to each other give one edge, not two.
    pair = {"x": frozenset({"rare"}), "y": frozenset({"rare"})}
    assert [(e.src, e.dst) for e in build_edges(pair, pair, idf)] == [("x", "y")]


def test_overlapping_windows_are_not_linked() -> None:
    known = {"w1": frozenset({"sweden"}), "w2": frozenset({"sweden"}), "far": frozenset({"sweden"})}
    sources = {"w1": frozenset({"t1", "t2"}), "w2": frozenset({"t2", "t3"}), "far": frozenset({"t9"})}
    edges = build_edges({"w1": known["w1"]}, known, idf_weights({"sweden": 3}, 100), sources)
    assert [(e.src, e.dst) for e in edges] == [("far", "w1")]
