"""Knowledge bases on real services (api/knowledgebase.py): files uploaded as JSON and multipart, processed on the
queues (memos.chunker.document, then the indexer), found by /search/memory with knowledgebase_ids, deleted.

The session's workers (chunker, indexer, search) run the pipeline; the Flask test client is the API in-process.
"""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from helpers import wait_for
from kb_files import corrupt_pdf, make_pdf
from sqlalchemy import func, select

from cli.harness import Isolated
from memos_pipeline.celery_app import make_celery
from memos_pipeline.config import Settings
from memos_pipeline.kb_schemas import MAX_FILE_BYTES
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Ingest, KnowledgeBaseFile, Memory

pytestmark = pytest.mark.integration

GUIDE_MD = """# Lighthouse handbook

The keeper lives on the island all year.

## Lamp maintenance

Polish the Fresnel lens every Tuesday with a chamois cloth and never with paper towels.

## Supplies

Kerosene arrives by boat on the first Monday of each month.
"""
RECIPES_HTML = """<!DOCTYPE html><html><head><title>Recipes</title><script>var hidden = "marzipan";</script></head>
<body><h1>Desserts</h1><h2>Quince tart</h2><p>Poach the quinces in saffron syrup for forty minutes.</p>
<h2>Fig cake</h2><p>Soak the dried figs overnight in black tea.</p></body></html>"""
NOTES_TXT = "Project notes.\n\nThe octopus aquarium needs seawater at eleven degrees Celsius.\n"


def post(client: FlaskClient, auth: dict[str, str], path: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = client.post(path, json=body, headers=auth)
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()


def upload(
    client: FlaskClient, auth: dict[str, str], kb_id: str, files: list[tuple[str, bytes]], status: int = 202
) -> Any:
    """A multipart upload, as MemOS's client and curl -F send it."""
    form = {"file": [(io.BytesIO(data), name) for name, data in files]}
    resp = client.post(
        f"/add/knowledgebase-file?knowledgebase_id={kb_id}", data=form, headers=auth, content_type="multipart/form-data"
    )
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()


def create_base(client: FlaskClient, auth: dict[str, str], name: str = "handbook") -> str:
    data = post(client, auth, "/create/knowledgebase", {"knowledgebase_name": name, "knowledgebase_description": None})
    kb_id: str = data["data"]["id"]
    return kb_id


def files_of(client: FlaskClient, auth: dict[str, str], kb_id: str) -> list[dict[str, Any]]:
    data = post(client, auth, "/get/knowledgebase-file", {"knowledgebase_id": kb_id, "page": 1, "page_size": 100})
    rows: list[dict[str, Any]] = data["data"]["file_detail_list"]
    return rows


def wait_files(client: FlaskClient, auth: dict[str, str], kb_id: str, n: int) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        rows = files_of(client, auth, kb_id)
        return rows if len(rows) == n and all(r["status"] != "processing" for r in rows) else None

    return wait_for(settled, f"{n} files of {kb_id} to be processed", 120)


def search(client: FlaskClient, auth: dict[str, str], query: str, kb_ids: list[str] | None, **extra: Any) -> Any:
    body = {"user_id": "kb-reader", "query": query, "knowledgebase_ids": kb_ids, "memory_limit_number": 5, **extra}
    return post(client, auth, "/search/memory", body)["data"]


def passages(settings: Settings, kb_id: str, status: str = "activated") -> int:
    with session_scope(settings) as s:
        q = select(func.count()).select_from(Memory).where(Memory.user_id == f"kb:{kb_id}", Memory.status == status)
        return int(s.execute(q).scalar_one())


def test_each_file_type_is_found_by_its_content_and_gone_once_deleted(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    kb_id = create_base(client, auth)
    pdf = make_pdf([["Ship log, page one."], ["The albatross nested on the radio mast in March."]])
    # JSON: a text file by its text, a PDF as a base64 data URI; multipart: Markdown and HTML (and the MemOS
    # client's field names: file_name, nulls for what it does not set).
    added = post(
        client,
        auth,
        "/add/knowledgebase-file",
        {
            "knowledgebase_id": kb_id,
            "file": [
                {"name": "notes.txt", "content": NOTES_TXT},
                {"file_name": "log.pdf", "content": "data:application/pdf;base64," + base64.b64encode(pdf).decode()},
            ],
        },
        status=202,
    )["data"]
    assert [f["name"] for f in added] == ["notes.txt", "log.pdf"]
    assert [f["format"] for f in added] == ["text", "pdf"]
    assert all(f["status"] == "processing" and f["task_id"] for f in added)
    multi = upload(client, auth, kb_id, [("guide.md", GUIDE_MD.encode()), ("recipes.html", RECIPES_HTML.encode())])
    assert [f["format"] for f in multi["data"]] == ["markdown", "html"]

    rows = wait_files(client, auth, kb_id, 4)
    assert {r["status"] for r in rows} == {"done"}, rows
    by_name = {r["name"]: r for r in rows}
    assert by_name["log.pdf"]["pages"] == 2 and by_name["guide.md"]["passages"] >= 3

    cases = [
        ("what temperature does the octopus tank need", "notes.txt", "eleven degrees"),
        ("how often to polish the lens", "guide.md", "Fresnel lens every Tuesday"),
        ("how long to poach quinces", "recipes.html", "saffron syrup"),
        ("where did the albatross nest", "log.pdf", "radio mast"),
    ]
    for query, name, needle in cases:
        found = search(client, auth, query, [kb_id])["memory_detail_list"]
        top = found[0]
        assert needle in top["memory_value"], (query, found)
        assert top["kind"] == "document" and top["info"]["file_name"] == name
        assert top["info"]["knowledgebase_id"] == kb_id and top["conversation_id"] == by_name[name]["id"]
        # BM25 has the passage too (the indexer ran): found by keywords alone
        keyword = search(client, auth, needle, [kb_id], channels=["bm25"])["memory_detail_list"]
        assert any(needle in m["memory_value"] for m in keyword), (needle, keyword)
    lens = search(client, auth, "how often to polish the lens", [kb_id])["memory_detail_list"][0]
    assert lens["info"]["section"] == "Lighthouse handbook > Lamp maintenance"
    assert lens["memory_key"] == "Lighthouse handbook > Lamp maintenance"
    mast = search(client, auth, "where did the albatross nest", [kb_id])["memory_detail_list"][0]
    assert (mast["info"]["page"], mast["info"]["page_end"]) == (1, 2)  # both short pages: one passage, its pages
    script = search(client, auth, "marzipan", [kb_id], channels=["bm25"])["memory_detail_list"]
    assert script == []  # an HTML page's scripts are not text

    # Without knowledgebase_ids a search sees the user's memories only.
    assert search(client, auth, "how long to poach quinces", None)["memory_detail_list"] == []

    # Deleting a file removes its passages from search at once (dense and BM25), and from the listing.
    recipes = by_name["recipes.html"]["id"]
    gone = post(client, auth, "/delete/knowledgebase-file", {"file_ids": [recipes, str(uuid.uuid4())]})["data"]
    assert gone["success"] is True and gone["deleted"] == [recipes] and gone["deleted_passages"] >= 2
    assert len(gone["not_found"]) == 1
    for channels in (None, ["bm25"], ["dense"]):
        found = search(client, auth, "how long to poach quinces saffron", [kb_id], channels=channels)
        assert all(m["info"]["file_name"] != "recipes.html" for m in found["memory_detail_list"]), found
    assert {r["name"] for r in files_of(client, auth, kb_id)} == {"notes.txt", "log.pdf", "guide.md"}
    # again: a retry deletes nothing more
    again = post(client, auth, "/delete/knowledgebase-file", {"file_ids": [recipes]})["data"]
    assert again["deleted"] == [] and again["not_found"] == [recipes]

    # Deleting the base removes every passage; the base is then unknown to search and to the file routes.
    assert passages(workers, kb_id) > 0
    post(client, auth, "/delete/knowledgebase", {"knowledgebase_id": kb_id})
    assert passages(workers, kb_id) == 0
    post(client, auth, "/search/memory", {"user_id": "u", "query": "lens", "knowledgebase_ids": [kb_id]}, 422)
    post(client, auth, "/get/knowledgebase-file", {"knowledgebase_id": kb_id}, 404)
    post(client, auth, "/delete/knowledgebase", {"knowledgebase_id": kb_id}, 404)


def test_passages_and_the_users_memories_are_ranked_together(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    kb_id = create_base(client, auth, "travel")
    upload(client, auth, kb_id, [("visa.txt", b"Travellers to Atlantis need a coral visa stamped at the harbour.")])
    add = post(
        client,
        auth,
        "/add/message",
        {"user_id": "kb-reader", "messages": [{"role": "user", "content": "I adopted a beagle called Biscuit."}]},
        202,
    )["data"]
    wait_files(client, auth, kb_id, 1)
    wait_for(
        lambda: post(client, auth, "/get/status", {"task_id": add["task_id"]})["data"]["status"] == "done", "the add"
    )
    both = search(client, auth, "coral visa for Atlantis", [kb_id])["memory_detail_list"]
    assert "coral visa" in both[0]["memory_value"] and both[0]["kind"] == "document"
    assert any("Biscuit" in m["memory_value"] for m in both)  # the user's memory is still there, ranked lower
    dog = search(client, auth, "what is my dog called", [kb_id])["memory_detail_list"]
    assert "Biscuit" in dog[0]["memory_value"] and dog[0]["kind"] == "raw"
    assert search(client, auth, "coral visa", [kb_id, kb_id])["memory_detail_list"][0]["kind"] == "document"


def test_bad_files_are_refused_naming_the_field_and_nothing_is_stored(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    kb_id = create_base(client, auth, "rejects")
    big = b"a" * (50 * 1024 * 1024)  # 50 MB, over the 20 MB limit
    assert len(big) > MAX_FILE_BYTES
    err = upload(client, auth, kb_id, [("big.txt", big)], status=413)
    assert err["code"] == 41301 and err["message"].startswith("file"), err
    cases: list[tuple[str, bytes, str]] = [
        ("empty.txt", b"", "file[0]: the file is empty"),
        ("broken.pdf", corrupt_pdf(), "file[0]: not a readable PDF"),
        ("slides.pptx", b"PK\x03\x04...", "file[0]: unsupported file type '.pptx'"),
        ("latin1.txt", b"caf\xe9", "file[0]: not UTF-8 text"),
    ]
    for name, data, message in cases:
        err = upload(client, auth, kb_id, [(name, data)], status=422)
        assert err["message"].startswith(message), err
        assert err["data"]["errors"][0]["field"] == "file[0]"
    # one bad file among good ones: none of them is stored
    err = upload(client, auth, kb_id, [("ok.txt", b"fine text"), ("empty.md", b"  ")], status=422)
    assert err["message"].startswith("file[1]: the file is empty")
    # JSON bodies: the same checks, and what only JSON can get wrong
    for file, message in [
        ({"name": "a.txt", "content": "https://example.com/a.pdf"}, "file[0].content: Value error, URLs are not"),
        ({"name": "a.pdf", "content": "data:application/pdf;base64,%%%"}, "file[0].content: not valid base64"),
        ({"name": "a.pdf", "content": "data:application/pdf;base64,SGVsbG8="}, "file[0]: not a readable PDF"),
    ]:
        err = post(client, auth, "/add/knowledgebase-file", {"knowledgebase_id": kb_id, "file": [file]}, 422)
        assert err["message"].startswith(message), err
    err = post(client, auth, "/add/knowledgebase-file", {"knowledgebase_id": kb_id, "file": []}, 422)
    assert err["message"].startswith("file:")
    upload(client, auth, str(uuid.uuid4()), [("a.txt", b"text")], status=404)
    resp = client.post("/add/knowledgebase-file", data={"file": [(io.BytesIO(b"x"), "a.txt")]}, headers=auth)
    assert resp.status_code == 422 and resp.get_json()["message"].startswith("knowledgebase_id:")
    assert files_of(client, auth, kb_id) == []
    with session_scope(workers) as s:
        stored = s.execute(
            select(func.count())
            .select_from(KnowledgeBaseFile)
            .where(KnowledgeBaseFile.knowledgebase_id == uuid.UUID(kb_id))
        )
        assert stored.scalar_one() == 0


def test_a_pdf_without_text_fails_with_the_reason_and_is_never_searchable(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    kb_id = create_base(client, auth, "scans")
    [f] = upload(client, auth, kb_id, [("scan.pdf", make_pdf([[]]))])["data"]  # opens fine, has a page, no text
    [row] = wait_files(client, auth, kb_id, 1)
    assert row["id"] == f["id"] and row["status"] == "failed"
    assert "no text in the PDF" in row["reason"], row
    assert passages(workers, kb_id) == 0
    status = post(client, auth, "/get/status", {"task_id": f["task_id"]})["data"]
    assert status["status"] == "failed" and status["stages"]["indexer"]["status"] == "skipped"


def test_the_same_upload_again_is_the_same_file(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    kb_id = create_base(client, auth, "retries")
    first = upload(client, auth, kb_id, [("a.md", b"# A\n\nSame bytes.")])["data"][0]
    again = upload(client, auth, kb_id, [("a.md", b"# A\n\nSame bytes.")])["data"][0]
    assert again["id"] == first["id"] and again["duplicate"] is True and first["duplicate"] is False
    renamed = upload(client, auth, kb_id, [("b.md", b"# A\n\nSame bytes.")])["data"][0]
    assert renamed["id"] != first["id"]
    assert len(wait_files(client, auth, kb_id, 2)) == 2
    with session_scope(workers) as s:
        n = s.execute(select(func.count()).select_from(Ingest).where(Ingest.user_id == f"kb:{kb_id}")).scalar_one()
    assert n == 2


def test_a_key_sees_only_its_tenants_bases(
    workers: Settings, client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    kb_id = create_base(client, auth, "private")
    [f] = upload(client, auth, kb_id, [("secret.txt", b"The vault code is 4711.")])["data"]
    wait_files(client, auth, kb_id, 1)
    with session_scope(settings) as s:
        _, other_key = tenants.create_api_key(s, f"other-{uuid.uuid4().hex[:8]}", "test")
    other = {"Authorization": f"Token {other_key}"}
    err = post(
        client, other, "/search/memory", {"user_id": "u", "query": "vault code", "knowledgebase_ids": [kb_id]}, 422
    )
    assert err["message"] == f"knowledgebase_ids: no knowledge base {kb_id}"
    post(client, other, "/get/knowledgebase-file", {"knowledgebase_id": kb_id}, 404)
    assert post(client, other, "/get/knowledgebase-file", {"file_ids": [f["id"]]})["data"]["file_detail_list"] == []
    post(client, other, "/delete/knowledgebase", {"knowledgebase_id": kb_id}, 404)
    assert post(client, other, "/delete/knowledgebase-file", {"file_ids": [f["id"]]})["data"]["deleted"] == []
    upload(client, other, kb_id, [("x.txt", b"intrusion")], status=404)
    # still there for its own tenant
    assert "4711" in search(client, auth, "vault code", [kb_id])["memory_detail_list"][0]["memory_value"]


def test_adds_name_bases_that_exist(workers: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    kb_id = create_base(client, auth, "allowed")
    msg = [{"role": "user", "content": f"note {uuid.uuid4().hex}"}]
    err = post(
        client, auth, "/add/message", {"user_id": "u", "messages": msg, "allow_knowledgebase_ids": ["nope"]}, 422
    )
    assert err["message"] == "allow_knowledgebase_ids: no knowledge base nope"
    data = post(
        client, auth, "/add/message", {"user_id": "u", "messages": msg, "allow_knowledgebase_ids": [kb_id]}, 202
    )
    assert data["data"]["ignored"] == ["allow_knowledgebase_ids"]  # validated, not yet written into the base


def test_get_knowledgebase_file_validates_its_body(
    workers: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    err = post(client, auth, "/get/knowledgebase-file", {"file_ids": None, "knowledgebase_id": None}, 422)
    assert "exactly one of file_ids and knowledgebase_id" in err["message"]
    kb_id = create_base(client, auth, "types")
    data = post(client, auth, "/get/knowledgebase-file", {"knowledgebase_id": kb_id, "type": "skill"})["data"]
    assert data == {**data, "file_detail_list": [], "total": 0, "page": 1, "page_size": 20}
    post(client, auth, "/create/knowledgebase", {"knowledgebase_name": ""}, 422)


def test_import_kb_imports_a_directory_and_a_rerun_skips_it(
    workers: Settings, client: FlaskClient, tmp_path: Path
) -> None:
    """`memos-pipeline import-kb`'s work (cli/kb.py) on the session's workers: supported files accepted and
    processed, the others listed with the reason, a second run stores nothing again."""
    from cli.kb import import_dir, wait_processed

    name = f"importer-{uuid.uuid4().hex[:8]}"
    with session_scope(workers) as s:
        _, key = tenants.create_api_key(s, name, "test")
    auth = {"Authorization": f"Token {key}"}
    (tmp_path / "sub").mkdir()
    (tmp_path / "guide.md").write_text(GUIDE_MD)
    (tmp_path / "sub" / "notes.txt").write_text(NOTES_TXT)
    (tmp_path / "sub" / "log.pdf").write_bytes(make_pdf([["The albatross nested on the radio mast in March."]]))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not a supported suffix: not even looked at
    sender = make_celery(workers)
    summary = import_dir(workers, sender, name, tmp_path, "imported", progress=False)
    assert (summary["files_seen"], summary["accepted"], summary["duplicates"]) == (4, 3, 0)
    assert summary["rejected"] == [{"file": "empty.txt", "reason": "the file is empty"}]
    assert wait_processed(workers, name, summary["file_ids"], 120, progress=False) == {"done": 3}
    found = search(client, auth, "where did the albatross nest", [summary["knowledgebase_id"]])
    assert "radio mast" in found["memory_detail_list"][0]["memory_value"]
    again = import_dir(workers, sender, name, tmp_path, "imported", progress=False)
    assert again["knowledgebase_id"] == summary["knowledgebase_id"]
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert len(files_of(client, auth, summary["knowledgebase_id"])) == 3


def test_the_knowledge_base_benchmark_measures_a_small_pdf(http_stack: Isolated) -> None:
    """`memos-pipeline bench-kb`'s measurement on the session's stack, with a few pages (the README's number is
    for 200)."""
    from evaluation.kb_bench import run_kb_bench

    out = run_kb_bench(http_stack.settings, pages=3, on=http_stack, timeout=120)
    assert out["pages"] == 3 and out["passages"] >= 3 and out["pages_per_s"] > 0
    assert out["document_stage_ms"]["embed_ms"] > 0 and out["search_with_base_ms"]["p50"] > 0
