"""User profiles on real services: slots filled from a conversation by the memreader through the fake LLM server
(a bound profile) or by the rules (no profile yet), versioned with their sources; edited, locked, removed and
deleted through the API; templates bound; bad input answered with a 4xx naming the field.

The LLM tests run on the session's LLM stack (``llm_stack``), whose API app this module builds once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import wait_for
from sqlalchemy import select

from fakes.llm import FakeLLM
from memos_pipeline.config import Settings
from memos_pipeline.llm import LLMClient
from memos_pipeline.stages import profile as profile_stage
from memos_pipeline.storage import ingests, profiles
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.models import Memory, Preference
from memos_pipeline.storage.profiles import Owner

pytestmark = pytest.mark.integration

SLOTS = [
    {"name": "name", "description": "what the user is called"},
    {"name": "location", "description": "the city the user lives in", "group": "basic"},
    {"name": "occupation", "description": "the user's job"},
]


@pytest.fixture(scope="module")
def llm_app(llm_stack: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(llm_stack)
    yield app
    app.extensions["memos_celery"].close()


@pytest.fixture
def api(llm_app: Flask, fake_llm: FakeLLM) -> FlaskClient:
    if not fake_llm.alive():  # a test elsewhere may have left it down
        fake_llm.restart()
    fake_llm.script()  # auto answers, a fresh call log
    return llm_app.test_client()


def post(client: FlaskClient, auth: dict[str, str], path: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = client.post(path, json=body, headers=auth)
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()["data"] if status < 400 else resp.get_json()


def add_and_wait(client: FlaskClient, auth: dict[str, str], user: str, *said: str) -> uuid.UUID:
    messages = [{"role": "user", "content": text} for text in said]
    added = post(client, auth, "/add/message", {"user_id": user, "messages": messages}, 202)
    task = added["task_id"]
    wait_for(lambda: post(client, auth, "/get/status", {"task_id": task})["status"] == "done", task)
    return uuid.UUID(added["ingest_id"])


def profile_of(client: FlaskClient, auth: dict[str, str], user: str, **extra: Any) -> list[dict[str, Any]]:
    data = post(client, auth, "/search/memory", {"user_id": user, "query": "who is the user", "mode": "fast", **extra})
    return data.get("profile_detail_list") or []


def test_bound_profile_filled_by_the_model_versioned_with_sources(
    api: FlaskClient, auth: dict[str, str], tenant: tuple[uuid.UUID, str], fake_llm: FakeLLM, llm_stack: Settings
) -> None:
    user = f"prof-{uuid.uuid4().hex[:8]}"
    bound = post(
        api,
        auth,
        "/bind/profile_template",
        {"bind_list": [{"user_id": user, "profile_template_id": "tpl-basic", "slots": SLOTS}]},
    )
    assert bound["success"] is True and bound["bound"][0]["profile_template_id"] == "tpl-basic"

    first = add_and_wait(api, auth, user, "Hi! My name is Alice Chen.", "I live in Lisbon and I work as a nurse.")
    assert fake_llm.calls()["counts"].get("profile") == 1
    # A redelivered memreader task replays the stored answer: no second call, nothing written twice.
    with session_scope(llm_stack) as s:
        ingest = ingests.get_ingest(s, first)
        assert profile_stage.update_profile(s, LLMClient(llm_stack), ingest) == 0
    assert fake_llm.calls()["counts"].get("profile") == 1
    [prof] = profile_of(api, auth, user)
    assert prof["profile_template_id"] == "tpl-basic"
    assert prof["profile"] == {"location": "Lisbon", "name": "Alice Chen", "occupation": "nurse"}
    assert "name: Alice Chen" in prof["memory"]
    slots = {s["slot"]: s for s in prof["slots"]}
    assert slots["location"]["group"] == "basic" and slots["location"]["origin"] == "llm"
    # Each slot cites what it came from: a fact of this user that says it (or a preference the preference stage,
    # running beside the memreader, had written by then: those are shown to the model too).
    with session_scope(llm_stack) as s:
        for slot, said in [("name", "Alice Chen"), ("location", "Lisbon")]:
            [src] = slots[slot]["sources"]
            if src["type"] == "memory":
                fact = s.get(Memory, uuid.UUID(src["id"]))
                assert fact is not None and fact.kind == "fact" and fact.user_id == user and said in fact.memory_value
            else:
                pref = s.get(Preference, uuid.UUID(src["id"]))
                assert src["type"] == "preference" and pref is not None and said in pref.preference

    # A later conversation moves the user: a new version of the slot, the old one kept (archived).
    add_and_wait(api, auth, user, "I moved last month, I live in Porto now.")
    [prof] = profile_of(api, auth, user)
    assert prof["profile"]["location"] == "Porto" and prof["profile"]["name"] == "Alice Chen"
    with session_scope(llm_stack) as s:
        history = profiles.slot_history(s, Owner(tenant[0], user), "location")
        assert [(h.version, h.value, h.status) for h in history] == [
            (1, "Lisbon", "archived"),
            (2, "Porto", "activated"),
        ]


def test_unusable_model_answer_falls_back_to_the_rules(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM
) -> None:
    user = f"prof-{uuid.uuid4().hex[:8]}"
    post(
        api,
        auth,
        "/bind/profile_template",
        {"bind_list": [{"user_id": user, "profile_template_id": "tpl-basic", "slots": SLOTS}]},
    )
    fake_llm.script(routes={"profile": [{"content": "not json {"}, {"content": '{"updates": [{"slot": 1}]}'}]})
    add_and_wait(api, auth, user, "My name is Eve Stone.")
    assert fake_llm.calls()["counts"]["profile"] == 2  # the answer and its repair round, then the rules
    [prof] = profile_of(api, auth, user)
    assert prof["profile"] == {"name": "Eve Stone"} and prof["slots"][0]["origin"] == "rule"


def test_profile_edited_locked_removed_and_deleted_through_the_api(
    api: FlaskClient, auth: dict[str, str], fake_llm: FakeLLM
) -> None:
    user = f"prof-{uuid.uuid4().hex[:8]}"
    add_and_wait(api, auth, user, "My name is Bruno Diaz and I live in Madrid.")
    # No profile yet: the rules filled it, the model was not asked.
    assert fake_llm.calls()["counts"].get("profile") is None
    [prof] = profile_of(api, auth, user)
    assert prof["profile"] == {"name": "Bruno Diaz", "location": "Madrid"}
    assert {s["origin"] for s in prof["slots"]} == {"rule"}

    edit = {
        "user_id": user,
        "metadata": {"basic": {"location": {"value": "Valencia", "algorithm_updatable": False}}, "pets": ["cat"]},
        "remove_fields": ["name"],
    }
    data = post(api, auth, "/edit/profile", edit)
    assert data["success"] is True and sorted(data["updated"]) == ["location", "pets"] and data["removed"] == ["name"]
    assert data["profile"]["profile"] == {"location": "Valencia", "pets": ["cat"]}
    assert post(api, auth, "/edit/profile", edit)["updated"] == []  # the same edit again writes nothing
    [listed] = post(api, auth, "/get/memory", {"user_id": user})["profile_detail_list"]
    assert listed["profile"] == {"location": "Valencia", "pets": ["cat"]}

    # The locked slot stays as the human set it; the model (the user has a profile now) fills the others.
    add_and_wait(api, auth, user, "I live in Seville now. I work as a chef.")
    assert fake_llm.calls()["counts"].get("profile") == 1
    [prof] = profile_of(api, auth, user)
    assert prof["profile"]["location"] == "Valencia" and prof["profile"]["occupation"] == "chef"
    slots = {s["slot"]: s for s in prof["slots"]}
    assert slots["location"]["algorithm_updatable"] is False and slots["location"]["version"] == 2

    # An agent's profile is its own, shown beside the user's when a search names the agent.
    post(api, auth, "/edit/profile", {"user_id": user, "agent_id": "tutor", "metadata": {"tone": "patient"}})
    assert len(profile_of(api, auth, user)) == 1
    assert [p["profile"] for p in profile_of(api, auth, user, agent_id="tutor")][1] == {"tone": "patient"}

    deleted = post(api, auth, "/delete/profile", {"user_id": user})
    assert deleted == {
        "success": True,
        "deleted": True,
        "deleted_slots": 3,
        "ignored": [],
    }  # location, pets, occupation
    assert profile_of(api, auth, user) == []
    assert post(api, auth, "/delete/profile", {"user_id": user})["deleted"] is False


def test_template_binding_and_bad_input(client: FlaskClient, auth: dict[str, str], settings: Settings) -> None:
    """Binding needs no workers: the routes write Postgres directly."""
    user = f"prof-{uuid.uuid4().hex[:8]}"
    err = post(
        client, auth, "/bind/profile_template", {"bind_list": [{"user_id": user, "profile_template_id": "nope"}]}, 422
    )
    assert err["message"].startswith("bind_list[0].profile_template_id: no profile template nope")
    # Defined once with its slots, a template binds by id alone after that (to another user here).
    other = f"{user}-2"
    body = {
        "bind_list": [
            {"user_id": user, "profile_template_id": "tpl-x", "slots": SLOTS},
            {"user_id": other, "profile_template_id": "tpl-x"},
        ]
    }
    assert len(post(client, auth, "/bind/profile_template", body)["bound"]) == 2
    with session_scope(settings) as s:
        defs = profiles.slot_defs(s, Owner(_tenant(s, user), other))
        assert [d.name for d in defs] == ["name", "location", "occupation"]

    for path, bad, field in [
        ("/edit/profile", {"metadata": {"name": "x"}}, "user_id"),
        ("/edit/profile", {"user_id": user, "metadata": {"name": 3}}, "metadata.name"),
        (
            "/edit/profile",
            {"user_id": user, "metadata": {"name": "x"}, "profile_template_id": "nope"},
            "profile_template_id",
        ),
        ("/delete/profile", {"agent_id": ""}, "agent_id"),
        ("/bind/profile_template", {"bind_list": "tpl"}, "bind_list"),
    ]:
        err = post(client, auth, path, bad, 422)
        assert err["message"].startswith(f"{field}:"), (path, err)
    assert (
        client.post("/edit/profile", data="{", headers={**auth, "Content-Type": "application/json"}).status_code == 400
    )


def _tenant(s: Any, user: str) -> uuid.UUID:
    from memos_pipeline.storage.models import ProfileInstance

    return s.execute(select(ProfileInstance.tenant_id).where(ProfileInstance.user_id == user)).scalar_one()


def test_a_feedback_fills_the_profile_as_an_add_does(api: FlaskClient, auth: dict[str, str]) -> None:
    """/add/feedback writes facts through the memreader too (the fake model turns the feedback into one fact); the
    profile follows them exactly as it follows an add's."""
    user = f"prof-{uuid.uuid4().hex[:8]}"
    body = {"user_id": user, "conversation_id": "c", "feedback_content": "I live in Lisbon now, not in Porto."}
    task = post(api, auth, "/add/feedback", body, 202)["task_id"]
    wait_for(lambda: post(api, auth, "/get/status", {"task_id": task})["status"] == "done", task)
    [prof] = profile_of(api, auth, user)
    assert prof["profile"].get("location") == "Lisbon"
    assert {s["origin"] for s in prof["slots"]} == {"rule"}
