"""Knowledge bases, MemOS-compatible: /create/knowledgebase, /delete/knowledgebase, /add/knowledgebase-file,
/get/knowledgebase-file, /delete/knowledgebase-file.

A file comes as JSON (``{"knowledgebase_id", "file": [{"name", "content"}]}``, content the text or a base64 data
URI) or as a multipart upload (``file`` parts; ``knowledgebase_id`` in the query string or a form field). Before
anything is written each file is checked (size, type, empty, a PDF that does not open): a bad one is a 413/422
naming it, and none of the request's files is stored. Accepted files are durable (bytes + ingest + outbox row, one
transaction) and processed on the queues (memos.chunker.document, then the indexer); /get/knowledgebase-file
shows each file's status: processing, done, or failed with the reason. Searches read bases through
``knowledgebase_ids`` (api/search.py).

Everything acts inside the key's tenant: another tenant's base or file id is "not found".
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from flask import Blueprint, Response, g, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge

from api import ok
from api.common import body, celery, settings
from api.errors import NOT_FOUND, TOO_LARGE, VALIDATION, ApiError, error_response
from memos_pipeline.ingest import lifecycle, outbox
from memos_pipeline.ingest.accept import AcceptResult, publish_accepted
from memos_pipeline.kb_schemas import (
    MAX_FILE_BYTES,
    MAX_FILES_PER_ADD,
    AddKnowledgebaseFileRequest,
    CreateKnowledgebaseRequest,
    DeleteKnowledgebaseFileRequest,
    DeleteKnowledgebaseRequest,
    GetKnowledgebaseFileRequest,
)
from memos_pipeline.schemas import IndexJob
from memos_pipeline.storage import knowledgebases as kb
from memos_pipeline.storage.db import session_scope
from memos_pipeline.text.readers import DocumentError, check, detect_format

bp = Blueprint("knowledgebase", __name__)
REINDEX_BATCH = 500  # passage ids per indexer task (as api/memories.py): many small messages, not one huge one
# The request may carry up to MAX_FILES_PER_ADD files, but never more than this in all (base64 adds a third).
MAX_REQUEST_BYTES = 2 * MAX_FILE_BYTES
_MB = 1024 * 1024


def _actor() -> str:
    return f"api:{g.tenant_id}:{g.request_id}"


def _invalid(field: str, message: str, status: int = 422) -> ApiError:
    """A 4xx in the shape of a validation error (data.errors), naming the field."""
    code = TOO_LARGE if status == 413 else VALIDATION
    return ApiError(status, code, f"{field}: {message}", {"errors": [{"field": field, "message": message}]})


def _unindex(ids: list[uuid.UUID]) -> None:
    """BM25 follows Postgres (deleted memories leave the index); search already hides them at commit."""
    for i in range(0, len(ids), REINDEX_BATCH):
        job = IndexJob(memory_ids=ids[i : i + REINDEX_BATCH])
        outbox.publish_quietly(celery(), "memos.indexer.upsert", job.model_dump(mode="json"))


def _base(s: Session, kb_id: str) -> kb.KnowledgeBase:
    base = kb.get_base(s, g.tenant_id, kb_id)
    if base is None:
        raise ApiError(404, NOT_FOUND, f"knowledgebase_id: no knowledge base {kb_id}")
    return base


@bp.app_errorhandler(kb.UnknownKnowledgebase)
def _unknown_base(exc: kb.UnknownKnowledgebase) -> tuple[Response, int]:
    """A base named by another route's field (an add's allow_knowledgebase_ids) that the tenant does not have."""
    errors = [{"field": exc.field, "message": f"no knowledge base {i}"} for i in exc.ids]
    return error_response(422, VALIDATION, str(exc), {"errors": errors})


# ---------------------------------------------------------------- bases


@bp.post("/create/knowledgebase")
def create_knowledgebase() -> tuple[Response, int]:
    req = body(CreateKnowledgebaseRequest)
    with session_scope(settings()) as s:
        base = kb.create_base(s, g.tenant_id, req.knowledgebase_name, req.knowledgebase_description)
        data = kb.base_item(base, files=0)
    return ok({**data, "ignored": req.ignored()})


@bp.post("/delete/knowledgebase")
def delete_knowledgebase() -> tuple[Response, int]:
    req = body(DeleteKnowledgebaseRequest)
    with session_scope(settings()) as s:
        deleted = kb.delete_base(s, g.tenant_id, _base(s, req.knowledgebase_id), _actor())
    _unindex(deleted)
    return ok({"success": True, "knowledgebase_id": req.knowledgebase_id, "deleted_passages": len(deleted)})


# ---------------------------------------------------------------- files


def _checked(field: str, name: str, content_type: str | None, data: bytes) -> kb.FileUpload:
    """One file, checked before anything is stored: size, type, content."""
    if len(data) > MAX_FILE_BYTES:
        raise _invalid(
            field, f"the file is {len(data) / _MB:.1f} MB, the limit is {MAX_FILE_BYTES // _MB} MB", status=413
        )
    try:
        fmt = detect_format(name, content_type, data)
        check(fmt, data)
    except DocumentError as exc:
        raise _invalid(field, str(exc)) from None
    return kb.FileUpload(name=name, format=fmt, content_type=content_type or "", data=data)


def _too_large() -> ApiError:
    return _invalid("file", f"the upload is over the limit of {MAX_REQUEST_BYTES // _MB} MB", status=413)


def _multipart() -> tuple[str, list[kb.FileUpload]]:
    kb_id = request.args.get("knowledgebase_id") or request.form.get("knowledgebase_id")
    if not kb_id:
        raise _invalid("knowledgebase_id", "required (in the query string or as a form field)")
    parts = request.files.getlist("file")
    if not parts:
        raise _invalid("file", "no file part named 'file' in the upload")
    if len(parts) > MAX_FILES_PER_ADD:
        raise _invalid("file", f"{len(parts)} files in one upload, the limit is {MAX_FILES_PER_ADD}")
    uploads = []
    for i, part in enumerate(parts):
        # Read one byte past the limit at most: a huge part is refused without reading it all into memory.
        data = part.stream.read(MAX_FILE_BYTES + 1)
        name = (part.filename or "").strip() or f"upload-{i + 1}"
        uploads.append(_checked(f"file[{i}]", name, part.mimetype or None, data))
    return kb_id, uploads


def _json_files() -> tuple[str, list[kb.FileUpload], list[str]]:
    req = body(AddKnowledgebaseFileRequest)
    uploads = []
    for i, f in enumerate(req.file):
        try:
            data, content_type = f.payload()
        except ValueError as exc:
            raise _invalid(f"file[{i}].content", str(exc).removeprefix("content: ")) from None
        uploads.append(_checked(f"file[{i}]", f.name, content_type, data))
    return req.knowledgebase_id, uploads, req.ignored()


@bp.post("/add/knowledgebase-file")
def add_knowledgebase_file() -> tuple[Response, int]:
    # This route takes files: a larger body than the API's MEMOS_MAX_BODY_BYTES, checked before it is read.
    request.max_content_length = MAX_REQUEST_BYTES
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise _too_large()
    ignored: list[str] = []
    try:
        if request.mimetype == "multipart/form-data":
            kb_id, uploads = _multipart()
        else:
            kb_id, uploads, ignored = _json_files()
    except RequestEntityTooLarge:  # a body without a length that turned out too long
        raise _too_large() from None
    cfg = settings()
    # One transaction for every file of the request: all of them are stored, or (an error) none.
    with session_scope(cfg) as s:
        base = _base(s, kb_id)
        pending = [kb.accept_file(s, g.tenant_id, base, u, trace_id=g.request_id) for u in uploads]
    accepted: list[tuple[kb.KnowledgeBaseFile, AcceptResult]] = [
        (f, publish_accepted(cfg, celery(), acc, lifecycle.DOCUMENT, g.request_id)) for f, acc in pending
    ]
    with session_scope(cfg) as s:
        rows, _ = kb.page_files(s, g.tenant_id, file_ids=[str(f.id) for f, _ in accepted], size=len(accepted))
        by_id = {f.id: kb.file_item(f, i) for f, i in rows}
    files = [{**by_id[f.id], "duplicate": res.accepted.duplicate, "published": res.published} for f, res in accepted]
    # MemOS's answer is the list of files; what it has no place for (fields ignored) is in each file's entry.
    if ignored:
        files = [{**f, "ignored": ignored} for f in files]
    return ok(files, 202)


@bp.post("/get/knowledgebase-file")
def get_knowledgebase_file() -> tuple[Response, int]:
    req = body(GetKnowledgebaseFileRequest)
    with session_scope(settings()) as s:
        kb_id = _base(s, req.knowledgebase_id).id if req.knowledgebase_id is not None else None
        rows: list[dict[str, Any]] = []
        total = 0
        if req.type != "skill":  # every file here is a document: a list of skill files is empty
            found, total = kb.page_files(
                s, g.tenant_id, kb_id=kb_id, file_ids=req.file_ids, page=req.page, size=req.page_size
            )
            rows = [kb.file_item(f, i) for f, i in found]
    data: dict[str, Any] = {
        "file_detail_list": rows,
        "total": total,
        "page": req.page,
        "page_size": req.page_size,
        "pages": math.ceil(total / req.page_size),
        "ignored": req.ignored(),
    }
    if req.file_ids is not None:
        data["not_found"] = sorted(set(req.file_ids) - {r["id"] for r in rows})
    return ok(data)


@bp.post("/delete/knowledgebase-file")
def delete_knowledgebase_file() -> tuple[Response, int]:
    req = body(DeleteKnowledgebaseFileRequest)
    with session_scope(settings()) as s:
        files, passages = kb.delete_files(s, g.tenant_id, req.file_ids, _actor())
    _unindex(passages)
    gone = {str(f) for f in files}
    return ok(
        {
            # As /delete/memory: a retry (already deleted) or an id not ours is listed in not_found.
            "success": True,
            "deleted": sorted(gone),
            "deleted_passages": len(passages),
            "not_found": sorted(set(req.file_ids) - gone),
            "ignored": req.ignored(),
        }
    )
