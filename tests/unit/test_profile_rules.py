"""The profile's pure parts: the rules that fill slots without the model, the model's prompt and answer check,
MemOS's edit metadata read into slot edits, and the profile rendered as text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fakes.llm import profile_answer
from memos_pipeline.profile_schemas import BindProfileTemplateRequest, EditProfileRequest, SlotEdit, flatten_metadata
from memos_pipeline.stages.profile import ProfileOut, SlotUpdate, check_profile, profile_prompt, rule_slots
from memos_pipeline.storage.profiles import DEFAULT_SLOTS, SlotDef, render


def test_rules_read_unambiguous_statements() -> None:
    found = rule_slots(
        [
            ("a", "The user said: My name is Alice Chen and I live in Lisbon."),
            ("b", "The user works as a nurse at the city hospital."),
            ("c", "The user speaks English, Portuguese and French."),
            ("d", "My daughter is called Mia. My husband's name is Tom."),
        ]
    )
    assert found["name"] == ("Alice Chen", ["a"])
    assert found["location"] == ("Lisbon", ["a"])
    assert found["occupation"] == ("nurse", ["b"])
    assert found["languages"] == (["English", "Portuguese", "French"], ["c"])
    assert found["family"] == (["daughter: Mia", "husband: Tom"], ["d"])


def test_rules_later_statement_wins_and_lists_collect() -> None:
    found = rule_slots(
        [
            ("a", "I live in Paris. I speak German."),
            ("b", "The user lives in Berlin now. The user speaks Italian."),
        ]
    )
    assert found["location"] == ("Berlin", ["b"])
    assert found["languages"] == (["German", "Italian"], ["a", "b"])


def test_rules_chinese() -> None:
    found = rule_slots([("a", "我叫张伟，我住在杭州。"), ("b", "我是一名工程师。")])
    assert found["name"] == ("张伟", ["a"])
    assert found["location"] == ("杭州", ["a"])
    assert found["occupation"] == ("工程师", ["b"])


@pytest.mark.parametrize(
    "text",
    ["I am a bit tired today", "The user likes living in the moment", "name: unknown", "I speak softly", "我很高兴"],
)
def test_rules_leave_vague_text_alone(text: str) -> None:
    assert rule_slots([("a", text)]) == {}


def test_prompt_offers_only_unlocked_slots_with_current_values() -> None:
    defs = [*DEFAULT_SLOTS[:2], SlotDef("pet", "the user's pet", algorithm_updatable=False)]
    prompt = profile_prompt(defs, {"name": "Alice", "languages": ["en"]}, ["The user moved to Porto."])
    assert "USER PROFILE" not in prompt  # the marker is the system prompt's (the fake routes on it)
    assert "- name: what the user is called | current: Alice" in prompt
    assert "- location: where the user lives (city, country) | current: (empty)" in prompt
    assert "pet" not in prompt
    assert prompt.endswith("[f0] The user moved to Porto.")


def test_check_profile_rejects_unknown_or_locked_slots_and_bad_sources() -> None:
    defs = [SlotDef("name"), SlotDef("pet", algorithm_updatable=False)]
    check_profile(ProfileOut(updates=[SlotUpdate(slot="name", value="Al", sources=["f1"])]), defs, 2)
    for update, where in [
        (SlotUpdate(slot="age", value="3", sources=["f0"]), "updates[0].slot"),
        (SlotUpdate(slot="pet", value="cat", sources=["f0"]), "updates[0].slot"),
        (SlotUpdate(slot="name", value="Al", sources=["f2"]), "updates[0].sources"),
        (SlotUpdate(slot="name", value="", sources=["f0"]), "updates[0].value"),
    ]:
        with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]")):
            check_profile(ProfileOut(updates=[update]), defs, 2)


def test_fake_model_answers_the_offered_slots() -> None:
    prompt = profile_prompt(DEFAULT_SLOTS[:2], {}, ["The user said: my name is Bo Li.", "They live in Oslo."])
    assert profile_answer(prompt) == {
        "updates": [
            {"slot": "name", "value": "Bo Li", "sources": ["f0"]},
            {"slot": "location", "value": "Oslo", "sources": ["f1"]},
        ]
    }


def test_metadata_forms_flatten_to_slot_edits() -> None:
    edits = flatten_metadata(
        {
            "name": "Alice",
            "languages": ["English", "French"],
            "basic": {"location": {"value": "Shanghai", "algorithm_updatable": False}, "job": "nurse"},
        }
    )
    assert edits == [
        SlotEdit("name", "Alice"),
        SlotEdit("languages", ["English", "French"]),
        SlotEdit("location", "Shanghai", "basic", False),
        SlotEdit("job", "nurse", "basic"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"name": "x"}}, "user_id"),
        ({"user_id": "u"}, "metadata"),
        ({"user_id": "u", "metadata": {"name": 5}}, "metadata.name"),
        ({"user_id": "u", "metadata": {"basic": {"city": {"value": ""}}}}, "metadata.basic.city.value"),
        ({"user_id": "u", "metadata": {"city": {"value": "x", "locked": True}}}, "metadata.city"),
        (
            {"user_id": "u", "metadata": {"city": {"value": "x", "algorithm_updatable": "no"}}},
            "metadata.city.algorithm_updatable",
        ),
        ({"user_id": "u", "metadata": {"name": "a", "g": {"name": "b"}}}, "metadata.g"),
        ({"user_id": "u", "remove_fields": ["a\x00"]}, "remove_fields[0]"),
    ],
)
def test_bad_edits_name_the_field(body: dict[str, object], field: str) -> None:
    from api.errors import validation_error

    with pytest.raises(ValidationError) as exc:
        EditProfileRequest.model_validate(body)
    assert validation_error(exc.value).message.startswith(f"{field}:")


def test_bind_list_items_are_checked() -> None:
    from api.errors import validation_error

    for body, field in [
        ({"bind_list": []}, "bind_list"),
        ({"bind_list": [{"user_id": "u"}]}, "bind_list[0].profile_template_id"),
        ({"bind_list": [{"profile_template_id": "t"}]}, "bind_list[0].user_id"),
        (
            {"bind_list": [{"user_id": "u", "profile_template_id": "t", "slots": [{"name": "a"}, {"name": "a"}]}]},
            "bind_list[0].slots",
        ),
    ]:
        with pytest.raises(ValidationError) as exc:
            BindProfileTemplateRequest.model_validate(body)
        assert validation_error(exc.value).message.startswith(f"{field}:"), validation_error(exc.value).message
    ok = BindProfileTemplateRequest.model_validate(
        {"bind_list": [{"user_id": "u", "profile_template_id": "t", "fields": [{"field": "city"}]}]}
    )
    assert ok.bind_list[0].slots is not None and ok.bind_list[0].slots[0].name == "city"


def test_render() -> None:
    assert render({"name": "Alice", "languages": ["English", "French"]}) == "name: Alice; languages: English, French"
