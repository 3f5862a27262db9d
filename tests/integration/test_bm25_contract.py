"""One contract for every BM25 backend: the embedded engine always, Elasticsearch when ``MEMOS_ES_URL`` is set.

Each test runs once per backend with a writer (the indexer's handle, which also manages generations) and a
separate reader (a search worker's handle). Without ``MEMOS_ES_URL`` the Elasticsearch runs are skipped, and the
reason is printed on the terminal as well as in the skip summary.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Generations, Bm25Index, Bm25Query, Generations
from memos_pipeline.text.tokenizer import analyzed, tokenize

pytestmark = pytest.mark.integration

ES_SKIP = (
    "Elasticsearch contract not run: MEMOS_ES_URL is not set (no Elasticsearch server can be installed on this "
    "machine); set MEMOS_ES_URL=http://host:9200 to run it against a server"
)
_told: set[str] = set()


@dataclass
class Backend:
    name: str
    writer: Bm25Generations
    reader: Bm25Index
    # How long a write takes to reach a reader in another process: tantivy readers reload every few ms;
    # Elasticsearch writes return once refreshed.
    settle_s: float

    def read(self, query: Bm25Query) -> list[str]:
        time.sleep(self.settle_s)
        return [i for i, _ in self.reader.search(query)]


def _print_skip(request: pytest.FixtureRequest) -> None:
    """Say it on the terminal once, not only in the skip summary (which ``-q`` without ``-rs`` hides)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or ES_SKIP in _told:
        return
    _told.add(ES_SKIP)
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[bm25 contract] {ES_SKIP}", yellow=True)


@pytest.fixture(params=["tantivy", "elasticsearch"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "tantivy":
        from memos_pipeline.storage.bm25.tantivy_index import TantivyIndex

        yield Backend("tantivy", TantivyIndex(tmp_path, writer=True), TantivyIndex(tmp_path, writer=False), 0.01)
        return
    url = os.environ.get("MEMOS_ES_URL")
    if not url:
        _print_skip(request)
        pytest.skip(ES_SKIP)
    from memos_pipeline.storage.bm25.es_index import EsIndex

    prefix = f"contract{uuid.uuid4().hex[:8]}"
    writer = EsIndex(url, prefix=prefix, writer=True, replicas=0)
    try:
        yield Backend("elasticsearch", writer, EsIndex(url, prefix=prefix, replicas=0), 0.0)
    finally:
        writer.delete_everything()


def doc(
    doc_id: str, text: str, *, tenant: str = "t1", user: str = "u1", conv: str = "c1", kind: str = "raw"
) -> Bm25Doc:
    return Bm25Doc(doc_id, tenant, user, conv, kind, analyzed(text))


def q(text: str, *, tenant: str = "t1", user: str = "u1", **kw: object) -> Bm25Query:
    return Bm25Query(tenant, user, tuple(tokenize(text)), **kw)  # type: ignore[arg-type]


def test_upsert_then_search_finds(backend: Backend) -> None:
    backend.writer.upsert([doc("a", "Priya booked a flight to Lisbon"), doc("b", "the climbing gym opens at nine")])
    assert [i for i, _ in backend.writer.search(q("lisbon flight"))] == ["a"]  # the writer's own view: at once
    assert backend.read(q("lisbon flight")) == ["a"]
    assert backend.read(q("climbing")) == ["b"]


def test_tenant_and_user_isolation(backend: Backend) -> None:
    text = "my passport number ends in 4417"
    backend.writer.upsert([doc("t1u1", text), doc("t1u2", text, user="u2"), doc("t2u1", text, tenant="t2")])
    assert backend.read(q("passport")) == ["t1u1"]
    assert backend.read(q("passport", user="u2")) == ["t1u2"]
    assert backend.read(q("passport", tenant="t2")) == ["t2u1"]
    assert backend.read(q("passport", tenant="t3")) == []


def test_conversation_and_kind_filters(backend: Backend) -> None:
    backend.writer.upsert(
        [
            doc("r1", "sourdough starter", conv="c1"),
            doc("r2", "sourdough starter", conv="c2"),
            doc("f1", "sourdough starter", conv="c1", kind="fact"),
        ]
    )
    assert sorted(backend.read(q("sourdough"))) == ["f1", "r1", "r2"]
    assert sorted(backend.read(q("sourdough", conversation_id="c1"))) == ["f1", "r1"]
    assert backend.read(q("sourdough", kinds=("fact",))) == ["f1"]
    assert sorted(backend.read(q("sourdough", kinds=("raw", "fact"), conversation_id="c2"))) == ["r2"]
    assert backend.read(q("sourdough", kinds=("preference",))) == []


def test_filters_do_not_change_the_score(backend: Backend) -> None:
    backend.writer.upsert([doc("a", "espresso machine on sale", conv="c1"), doc("b", "espresso", conv="c2")])
    time.sleep(backend.settle_s)
    plain = dict(backend.reader.search(q("espresso machine")))
    scoped = dict(backend.reader.search(q("espresso machine", conversation_id="c1", kinds=("raw",))))
    assert scoped["a"] == pytest.approx(plain["a"], rel=1e-6)  # the scope selects, only the text scores


def test_delete_with_and_without_routing(backend: Backend) -> None:
    backend.writer.upsert([doc("a", "jazz concert friday"), doc("b", "jazz club saturday", user="u2")])
    backend.writer.delete(["a"], routing=["u1"])
    assert backend.read(q("jazz")) == []
    assert backend.read(q("jazz", user="u2")) == ["b"]
    backend.writer.delete(["b"])  # the caller does not know the user: the backend finds it
    assert backend.read(q("jazz", user="u2")) == []
    backend.writer.delete(["never-there"])  # deleting what is not there is not an error
    time.sleep(backend.settle_s)
    assert backend.reader.count() == 0


def test_reupsert_replaces(backend: Backend) -> None:
    backend.writer.upsert([doc("a", "I adopted a kitten named Miso")])
    backend.writer.upsert([doc("a", "I adopted a rescue dog named Pepper", conv="c9")])
    assert backend.read(q("kitten miso")) == []
    assert backend.read(q("pepper")) == ["a"]
    assert backend.read(q("pepper", conversation_id="c9")) == ["a"]
    time.sleep(backend.settle_s)
    assert backend.reader.count() == 1


def test_cjk_tokens(backend: Backend) -> None:
    backend.writer.upsert(
        [doc("zh", "我下个月要去北京出差，住在朝阳区。"), doc("en", "next month I travel to Beijing")]
    )
    assert backend.read(q("北京")) == ["zh"]
    assert backend.read(q("北京出差")) == ["zh"]
    assert backend.read(q("beijing")) == ["en"]


def test_scores_are_comparable(backend: Backend) -> None:
    backend.writer.upsert(
        [
            doc("tf3", "lisbon lisbon lisbon trip notes"),
            doc("tf1", "lisbon museum trip notes"),
            doc("both", "lisbon flight trip notes"),
            doc("none", "kyoto temple trip notes"),
        ]
    )
    time.sleep(backend.settle_s)
    hits = backend.reader.search(q("lisbon"))
    assert next(i for i, _ in hits) == "tf3"  # higher term frequency ranks higher
    scores = dict(hits)
    assert scores["tf3"] > scores["tf1"] > 0
    assert "none" not in scores
    two = dict(backend.reader.search(q("lisbon flight")))
    assert two["both"] > two["tf1"]  # matching more query terms ranks higher
    assert backend.reader.search(q("")) == []


def test_count(backend: Backend) -> None:
    backend.writer.upsert([doc(f"a{i}", f"note {i}") for i in range(5)] + [doc("b", "note", tenant="t2")])
    time.sleep(backend.settle_s)
    assert backend.reader.count() == 6
    assert backend.reader.count("t1") == 5
    assert backend.reader.count("t2") == 1
    assert backend.reader.count("t3") == 0


def test_generation_swap_is_atomic_for_readers(backend: Backend) -> None:
    w = backend.writer
    w.upsert([doc("old", "harbor pier nine")])
    first = w.generations()
    gen = w.next_generation()
    w.begin_generation(gen)
    w.begin_generation(gen)  # idempotent
    assert w.generations() == Generations(first.current, gen)
    w.generation(gen).upsert([doc("batch", "harbor pier nine rebuilt")])  # a batch: the new generation only
    w.upsert([doc("live", "harbor pier nine live")])  # a live write during the build: both generations
    assert sorted(backend.read(q("harbor"))) == ["live", "old"]  # readers still see the current generation
    assert w.generation(gen).count() == 2
    assert w.generation(first.current).count() == 2
    assert w.activate_generation(gen) == first.current
    assert w.activate_generation(gen) is None  # idempotent
    assert sorted(backend.read(q("harbor"))) == ["batch", "live"]  # one swap: all of the new, none of the old
    w.drop_generation(first.current)
    w.drop_generation(first.current)  # gone already: no-op
    assert sorted(backend.read(q("harbor"))) == ["batch", "live"]
    assert w.generations() == Generations(gen, None)
    w.upsert([doc("after", "harbor pier nine after")])  # live writes now land in the new generation
    assert "after" in backend.read(q("harbor"))
    with pytest.raises(ValueError):
        w.drop_generation(gen)  # the current one cannot be dropped


def test_copy_into_takes_every_tenant_but_one(backend: Backend) -> None:
    w = backend.writer
    w.upsert(
        [doc(f"t1-{i}", f"market stall {i}") for i in range(3)]
        + [doc(f"t2-{i}", f"market {i}", tenant="t2", user=f"u{i}") for i in range(4)]
    )
    gen = w.next_generation()
    w.begin_generation(gen)
    assert w.copy_into(gen, exclude_tenant="t1") == 4
    assert w.generation(gen).count("t2") == 4
    assert w.generation(gen).count("t1") == 0
    w.activate_generation(gen)
    assert sorted(backend.read(q("market", tenant="t2", user="u2"))) == ["t2-2"]  # routing kept by the copy


def test_abort_leaves_the_current_generation_serving(backend: Backend) -> None:
    w = backend.writer
    w.upsert([doc("a", "bamboo garden dinner")])
    current = w.generations().current
    gen = w.next_generation()
    w.begin_generation(gen)
    with pytest.raises(RuntimeError):
        w.begin_generation(gen + 1)  # one build at a time
    w.abort_generation(gen)
    assert w.generations() == Generations(current, None)
    w.upsert([doc("b", "bamboo garden lunch")])  # no longer dual-written anywhere
    assert sorted(backend.read(q("bamboo"))) == ["a", "b"]
    with pytest.raises(KeyError):
        w.generation(gen)
