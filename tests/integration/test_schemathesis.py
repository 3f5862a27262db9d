"""Schemathesis against the live API: every operation of the served /openapi.json, with valid and invalid inputs
(positive and negative generation), over real HTTP to gunicorn, never answers 5xx.

The API runs as a real gunicorn process on this session's database and queues, with the session's real workers
behind it (a search needs the search worker; without one it would rightly answer 504). The cases come from the
document the app builds, which must equal what the server serves and load in schemathesis from the server's URL,
so a document schemathesis rejects fails here too. Hand-written cases below cover JSON that Python accepts but
schemathesis never generates (NaN, 1e400, lone surrogates).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from live_api import run_api
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from api.meta import openapi_spec
from memos_pipeline.config import Settings
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope

pytestmark = pytest.mark.integration

# Examples per operation and generation phase; bounded so the module takes a minute or two on 2 cores.
MAX_EXAMPLES = int(os.environ.get("MEMOS_SCHEMATHESIS_EXAMPLES", "40"))


# The document as the app builds it; test_the_server_serves_this_document checks that the live server serves
# exactly this, so the generated cases are the served document's. (Loaded here rather than from the server because
# schemathesis 4.32's lazy, fixture-based loader breaks on pytest 9.2: it sets Node._nodeid, which 9.2 removed.)
schema = schemathesis.openapi.from_dict(
    openapi_spec(),
    config=schemathesis.Config.from_dict(
        {
            # database "none": no .hypothesis/ directory in the repository; every run generates afresh.
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "request-timeout": 60,
        }
    ),
)


@pytest.fixture(scope="module")
def live_api(workers: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, auth header) of a gunicorn API on the session's database and queues."""
    with session_scope(workers) as s:
        _, key = tenants.create_api_key(s, f"schemathesis-{uuid.uuid4().hex[:8]}", "schemathesis")
    # No per-key rate limit: a 429 is correct behaviour but would hide what the examples after it would find.
    # A short sync wait: generated adds queue up behind each other in the one chunker, and a sync add that waits
    # the full default would outlast the client's timeout (it answers 200 "timeout" when the wait runs out). The
    # same for /scheduler/wait: a generated wait on the tenant's backlog would block for its timeout_seconds.
    cfg = workers.with_overrides(rate_limit_per_min=0, sync_timeout_s=5.0, scheduler_wait_max_s=2.0)
    with run_api(cfg, log=tmp_path_factory.mktemp("schemathesis") / "api.log") as base:
        yield base, {"Authorization": f"Token {key}"}


def test_the_server_serves_this_document(live_api: tuple[str, dict[str, str]]) -> None:
    served = requests.get(f"{live_api[0]}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    assert served.json() == json.loads(json.dumps(openapi_spec()))
    # and schemathesis accepts it as loaded from the server, every operation of it (from a URL it leaves out the
    # operation that served the document itself)
    loaded = schemathesis.openapi.from_url(f"{live_api[0]}/openapi.json")
    labels = {op.ok().label for op in loaded.get_all_operations()}
    assert labels | {"GET /openapi.json"} == {op.ok().label for op in schema.get_all_operations()}


# The operations that need a model. The session's workers run without an LLM and without a reranker, so their
# documented answer here is 503 "no LLM configured" / "no reranker configured" (code 50301): that answer, and only
# that one, is what they must give instead of passing not_a_server_error. (Configuring the fake LLM instead would
# send feedbacks and chat write-backs to queues this stack has no worker for, and test the fake more than the API;
# test_memos_assist.py and test_memos_contract.py run these calls with a model.)
NEEDS_A_MODEL = {
    "/chat",
    "/add/feedback",
    "/extract/memory",
    "/rerank",
    "/product/feedback",
    "/product/chat/complete",
}


@schema.parametrize()
def test_no_server_errors(case: schemathesis.Case, live_api: tuple[str, dict[str, str]]) -> None:
    """No 5xx for any generated request (bar the documented 503 of a model call without a model); and every
    status and content type is one the document declares."""
    base, auth = live_api
    resp = case.call(base_url=base, headers=auth)
    checks = [status_code_conformance, content_type_conformance]
    if case.operation.path in NEEDS_A_MODEL and resp.status_code == 503:
        err = resp.json()
        assert err["code"] == 50301 and "configured" in err["message"], err
    else:
        checks.insert(0, not_a_server_error)
    case.validate_response(resp, checks=checks)


def test_the_document_covers_every_route(app: Flask) -> None:
    """Every route of the app (bar the /product aliases of the same views, blueprints named product_*) is in the
    document schemathesis tests; MemOS's server routes (api/product.py, blueprint "product") are."""
    routes = {
        (method, re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))  # Flask's <uuid:x> is OpenAPI's {x}
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.startswith("product_")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert routes == documented


# ---------------------------------------------------------------- what schemathesis never generates

ADD_PREFIX = '{"user_id": "u1", "messages": [{"role": "user", "content": '


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (ADD_PREFIX + '"hi"}], "info": {"x": NaN}}', "NaN is not a JSON number"),
        (ADD_PREFIX + '"hi"}], "info": {"x": -Infinity}}', "-Infinity is not a JSON number"),
        (ADD_PREFIX + '"hi"}], "info": {"x": 1e400}}', "out of range"),
        (ADD_PREFIX + '"hi"}], "info": {"x": ' + "9" * 5000 + "}}", "not valid JSON"),
        (ADD_PREFIX + '"lone \\ud800 half"}]}', "lone surrogate"),
        (ADD_PREFIX + '"hi"}], "info": {"\\udfff": 1}}', "lone surrogate"),
    ],
)
def test_json_python_accepts_but_postgres_cannot_store_is_400(
    client: FlaskClient, auth: dict[str, str], raw: str, names: str
) -> None:
    """Python's json module takes NaN, Infinity, 1e400 (as inf), integers of any length (until its digit limit
    raises) and lone surrogates; none of them is valid JSON text (RFC 8259) and Postgres or psycopg would fail on
    them with a 500. They are a 400 naming the body."""
    resp = client.post("/add/message", data=raw.encode(), headers={**auth, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == 40001 and body["message"].startswith("body: ") and names in body["message"], body


def test_a_surrogate_pair_is_a_character_not_an_error(client: FlaskClient, auth: dict[str, str]) -> None:
    raw = ADD_PREFIX + '"smile \\ud83d\\ude00"}], "info": {"big": 1e300, "n": 123456789012345678901234567890}}'
    resp = client.post("/add/message", data=raw.encode(), headers={**auth, "Content-Type": "application/json"})
    assert resp.status_code == 202, resp.get_data(as_text=True)
