"""Embedded BM25 on tantivy, over text our analyzer already tokenised (a whitespace-tokenised field).

One process writes (the indexer worker holds the writer lock for its lifetime); readers in other processes
``reload()`` to see new commits. Reload is cheap (it re-reads meta.json) but not free, so a reader reloads at
most every ``reload_interval`` seconds — the write path's commit is what bounds time-to-searchable for BM25.

Generations: the root directory holds generation 0 itself (the layout before generations existed, kept as is)
and later ones in ``gen-<n>/``. The small ``CURRENT`` file names the generation searches read and the one a
re-index is building; only the writer process writes it (temp file + fsync + ``os.replace``), so a reader sees
either the old or the new pointer, never half of one. Readers ``stat`` it at the same throttled cadence as their
reload and switch generations when it changes: the swap is atomic for them. While a generation is building, the
writer sends every upsert/delete to both; batch tasks write the building one through the same writer (a tantivy
index allows one writer, and it is this process's).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import tantivy

from memos_pipeline.storage.bm25 import Bm25Doc, Bm25Query, Generations

POINTER = "CURRENT"
_FIELDS = ("id", "tenant", "user", "conv", "kind")
_COPY_PAGE = 20_000


def _schema() -> tantivy.Schema:
    # Every field stored: a tenant-scoped re-index copies the other tenants' documents from the current
    # generation, and that needs them whole (generation 0 of an index made before this stores only ids).
    sb = tantivy.SchemaBuilder()
    for name in _FIELDS:
        sb.add_text_field(name, stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("text", stored=True, tokenizer_name="whitespace", index_option="freq")
    return sb.build()


def gen_path(root: Path, gen: int) -> Path:
    return root if gen == 0 else root / f"gen-{gen}"


def read_pointer(root: Path) -> Generations:
    try:
        data = json.loads((root / POINTER).read_text())
    except FileNotFoundError:
        return Generations(0, None)
    return Generations(int(data["current"]), None if data.get("building") is None else int(data["building"]))


def write_pointer(root: Path, gens: Generations) -> None:
    tmp = root / f".{POINTER}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"current": gens.current, "building": gens.building}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / POINTER)
    dirfd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dirfd)  # the rename itself survives a crash
    finally:
        os.close(dirfd)


class TantivyGeneration:
    """One generation: one tantivy index directory, read-only or with its (single) writer."""

    def __init__(self, path: Path, *, writer: bool, create: bool, reload_interval: float = 0.005) -> None:
        self.path = path
        # An existing index keeps its own schema (generation 0 may predate stored fields); a new one gets ours.
        # Both sides create with the same schema, so a reader/writer race on a fresh directory is harmless.
        if (path / "meta.json").exists():
            self._index = tantivy.Index.open(str(path))
        elif create:
            path.mkdir(parents=True, exist_ok=True)
            self._index = tantivy.Index(_schema(), path=str(path), reuse=True)
        else:
            raise FileNotFoundError(f"no BM25 generation at {path}")
        self.schema = self._index.schema
        self._writer = self._index.writer(heap_size=50_000_000, num_threads=1) if writer else None
        self._lock = threading.Lock()
        self._reload_interval = reload_interval
        self._last_reload = float("-inf")

    def _term(self, field: str, value: str) -> tantivy.Query:
        return tantivy.Query.term_query(self.schema, field, value)

    def _w(self) -> tantivy.IndexWriter:
        if self._writer is None:
            raise RuntimeError(f"generation {self.path} was opened read-only")
        return self._writer

    def upsert(self, docs: list[Bm25Doc]) -> None:
        with self._lock:
            w = self._w()
            for d in docs:
                w.delete_documents_by_term("id", d.id)
                w.add_document(
                    tantivy.Document(
                        id=d.id, tenant=d.tenant_id, user=d.user_id, conv=d.conversation_id, kind=d.kind, text=d.text
                    )
                )
            w.commit()
            self._last_reload = float("-inf")  # our own next read sees this commit

    def delete(self, ids: list[str], *, routing: Sequence[str] | None = None) -> None:
        with self._lock:
            w = self._w()
            for doc_id in ids:
                w.delete_documents_by_term("id", doc_id)
            w.commit()
            self._last_reload = float("-inf")

    def searcher(self, *, fresh: bool = False) -> tantivy.Searcher:
        now = time.monotonic()
        if fresh or now - self._last_reload >= self._reload_interval:
            self._index.reload()
            self._last_reload = now
        return self._index.searcher()

    def _scope(self, tenant_id: str, user_id: str, conversation_id: str | None, kinds: tuple[str, ...]) -> list:
        # Filters score 0 so that the BM25 score is the text match alone (comparable across queries).
        clauses = [self._term("tenant", tenant_id), self._term("user", user_id)]
        if conversation_id is not None:
            clauses.append(self._term("conv", conversation_id))
        if kinds:
            clauses.append(tantivy.Query.term_set_query(self.schema, "kind", list(kinds)))
        return [(tantivy.Occur.Must, tantivy.Query.const_score_query(q, 0.0)) for q in clauses]

    def search(self, query: Bm25Query) -> list[tuple[str, float]]:
        terms = sorted(set(query.tokens))
        if not terms:
            return []
        text = tantivy.Query.boolean_query([(tantivy.Occur.Should, self._term("text", t)) for t in terms])
        q = tantivy.Query.boolean_query(
            [
                *self._scope(query.tenant_id, query.user_id, query.conversation_id, query.kinds),
                (tantivy.Occur.Must, text),
            ]
        )
        searcher = self.searcher()
        hits = searcher.search(q, query.limit, count=False).hits
        return [(searcher.doc(addr)["id"][0], float(score)) for score, addr in hits]

    def count(self, tenant_id: str | None = None, *, fresh: bool = False) -> int:
        searcher = self.searcher(fresh=fresh)
        if tenant_id is None:
            return int(searcher.num_docs)
        return int(searcher.search(self._term("tenant", tenant_id), 1, count=True).count or 0)  # type: ignore[attr-defined]

    def iter_docs(self, *, exclude_tenant: str) -> Iterator[Bm25Doc]:
        """Every stored document but ``exclude_tenant``'s, from one searcher (a consistent snapshot)."""
        searcher = self.searcher(fresh=True)
        q = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Must, tantivy.Query.all_query()),
                (tantivy.Occur.MustNot, self._term("tenant", exclude_tenant)),
            ]
        )
        offset = 0
        while hits := searcher.search(q, _COPY_PAGE, count=False, offset=offset).hits:
            for _, addr in hits:
                d = searcher.doc(addr).to_dict()
                if "text" not in d:
                    raise RuntimeError(
                        f"{self.path} predates stored fields and cannot be copied: run a full re-index "
                        "(without --tenant) once"
                    )
                yield Bm25Doc(d["id"][0], d["tenant"][0], d["user"][0], d["conv"][0], d["kind"][0], d["text"][0])
            offset += len(hits)

    def close(self) -> None:
        """Release the writer lock (tantivy releases it when the writer is dropped)."""
        with self._lock:
            self._writer = None


class _Handle:
    """One generation seen through its writer, with exact (freshly reloaded) counts."""

    def __init__(self, gen: TantivyGeneration) -> None:
        self._gen = gen

    def upsert(self, docs: list[Bm25Doc]) -> None:
        self._gen.upsert(docs)

    def delete(self, ids: list[str], *, routing: Sequence[str] | None = None) -> None:
        self._gen.delete(ids)

    def search(self, query: Bm25Query) -> list[tuple[str, float]]:
        return self._gen.search(query)

    def count(self, tenant_id: str | None = None) -> int:
        return self._gen.count(tenant_id, fresh=True)


class TantivyIndex:
    """The index root: follows ``CURRENT`` for reads; on the writer side also manages generations."""

    def __init__(self, path: str | Path, *, writer: bool, reload_interval: float = 0.005) -> None:
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        self._writer = writer
        self._reload_interval = reload_interval
        self._lock = threading.RLock()
        self._checked = time.monotonic()
        for attempt in range(3):
            self._sig = self._pointer_sig()
            self._gens = read_pointer(self.root)
            try:
                self._current = self._open(self._gens.current)
                break
            except FileNotFoundError:  # dropped between reading the pointer and opening it: read it again
                if attempt == 2:
                    raise
        self._building = self._open(self._gens.building) if self._writer and self._gens.building is not None else None

    def _open(self, gen: int) -> TantivyGeneration:
        # Only the writer creates generations, except generation 0 of a fresh index (no pointer yet), which
        # readers may create too, as before generations existed. A reader never re-creates a dropped one.
        create = self._writer or (gen == 0 and self._sig is None)
        return TantivyGeneration(
            gen_path(self.root, gen), writer=self._writer, create=create, reload_interval=self._reload_interval
        )

    def _pointer_sig(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.root / POINTER)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # ------------------------------------------------------------ reads (every process)

    def _reader_view(self, *, force: bool = False) -> TantivyGeneration:
        """The current generation; a reader re-checks the pointer at most every reload interval (a stat)."""
        if self._writer:
            return self._current  # the writer process is the one that moves the pointer
        now = time.monotonic()
        if force or now - self._checked >= self._reload_interval:
            self._checked = now
            sig = self._pointer_sig()
            if sig != self._sig or force:
                gens = read_pointer(self.root)
                with self._lock:
                    self._sig = sig
                    if gens.current != self._gens.current:
                        self._current = self._open(gens.current)
                    self._gens = gens
        return self._current

    def search(self, query: Bm25Query) -> list[tuple[str, float]]:
        try:
            return self._reader_view().search(query)
        except (OSError, ValueError):
            if self._writer:
                raise
            # The generation we held was dropped right after a swap we had not seen yet: follow the pointer.
            return self._reader_view(force=True).search(query)

    def count(self, tenant_id: str | None = None) -> int:
        try:
            return self._reader_view().count(tenant_id)
        except (OSError, ValueError):
            if self._writer:
                raise
            return self._reader_view(force=True).count(tenant_id)

    # ------------------------------------------------------------ live writes (the indexer)

    def upsert(self, docs: list[Bm25Doc]) -> None:
        with self._lock:
            if self._building is not None:
                self._building.upsert(docs)  # dual-write: the generation being built must not miss live adds
            self._current.upsert(docs)

    def delete(self, ids: list[str], *, routing: Sequence[str] | None = None) -> None:
        with self._lock:
            if self._building is not None:
                self._building.delete(ids)
            self._current.delete(ids)

    # ------------------------------------------------------------ generations (the indexer)

    def _require_writer(self) -> None:
        if not self._writer:
            raise RuntimeError("generations are managed by the writer (the indexer worker) only")

    def generations(self) -> Generations:
        return self._gens if self._writer else read_pointer(self.root)

    def next_generation(self) -> int:
        used = [int(p.name[4:]) for p in self.root.glob("gen-*") if p.name[4:].isdigit()]
        return max([self._gens.current, self._gens.building or 0, *used]) + 1

    def begin_generation(self, gen: int) -> None:
        self._require_writer()
        with self._lock:
            if self._gens.building == gen:
                return
            if self._gens.building is not None:
                raise RuntimeError(f"generation {self._gens.building} is being built; abort it first")
            if gen <= self._gens.current:
                raise ValueError(f"generation {gen} is not newer than the current {self._gens.current}")
            # A directory the pointer never named is debris of a crash before this point: nothing reads it.
            shutil.rmtree(gen_path(self.root, gen), ignore_errors=True)
            self._building = self._open(gen)
            self._set_pointer(Generations(self._gens.current, gen))

    def generation(self, gen: int) -> _Handle:
        self._require_writer()
        with self._lock:
            if gen == self._gens.current:
                return _Handle(self._current)
            if gen == self._gens.building and self._building is not None:
                return _Handle(self._building)
        raise KeyError(f"generation {gen} is neither current ({self._gens.current}) nor building")

    def copy_into(self, gen: int, *, exclude_tenant: str) -> int:
        target = self.generation(gen)
        n, page = 0, []
        for doc in self._current.iter_docs(exclude_tenant=exclude_tenant):
            page.append(doc)
            if len(page) >= 5000:
                target.upsert(page)
                n, page = n + len(page), []
        if page:
            target.upsert(page)
        return n + len(page)

    def activate_generation(self, gen: int) -> int | None:
        self._require_writer()
        with self._lock:
            if gen == self._gens.current:
                return None
            if gen != self._gens.building or self._building is None:
                raise KeyError(f"generation {gen} is not being built (building: {self._gens.building})")
            previous, old = self._gens.current, self._current
            self._set_pointer(Generations(gen, None))  # the swap: one rename
            self._current, self._building = self._building, None
            old.close()
            return previous

    def drop_generation(self, gen: int) -> None:
        self._require_writer()
        with self._lock:
            if gen in (self._gens.current, self._gens.building):
                raise ValueError(f"generation {gen} is in use")
            # Readers still holding it keep working: their files are open (mmap) and vanish when released.
            path = gen_path(self.root, gen)
            if gen != 0:
                shutil.rmtree(path, ignore_errors=True)
                return
            for p in path.iterdir():  # generation 0 is the root itself: its files, not the other generations
                if p.is_file() and p.name != POINTER and not p.name.startswith(f".{POINTER}."):
                    p.unlink(missing_ok=True)

    def abort_generation(self, gen: int) -> None:
        self._require_writer()
        with self._lock:
            if gen == self._gens.building and self._building is not None:
                self._building.close()
                self._building = None
                self._set_pointer(Generations(self._gens.current, None))
            if gen != self._gens.current:
                self.drop_generation(gen)

    def _set_pointer(self, gens: Generations) -> None:
        write_pointer(self.root, gens)
        self._gens = gens
        self._sig = self._pointer_sig()
