"""Request bodies of the profile routes (api/profile.py), as MemOS's client sends them: /edit/profile,
/delete/profile, /bind/profile_template.

MemOS's ``metadata`` of an edit maps a slot to its value, either directly (``{"location": "Paris"}``) or with its
lock (``{"location": {"value": "Paris", "algorithm_updatable": false}}``), and may group slots
(``{"basic": {"location": {...}}}``). ``flatten_metadata`` reads all three into one edit per slot, naming the path
of anything else in a 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from memos_pipeline.schemas import SafeText, _ClientRequest, _no_control_chars

MAX_SLOTS = 100
MAX_VALUE_CHARS = 2000
MAX_LIST_ITEMS = 50
_OWNER = Field(None, min_length=1, max_length=256)
SlotName = Annotated[SafeText, Field(min_length=1, max_length=128)]


@dataclass(frozen=True)
class SlotEdit:
    slot: str
    value: str | list[str]
    group: str = ""
    algorithm_updatable: bool | None = None


def _bad(reason: str, *path: str) -> PydanticCustomError:
    # ctx["path"] extends the error's location past the field (api/errors.py): metadata.basic.location.value
    return PydanticCustomError("profile_metadata", "{reason}", {"reason": reason, "path": path})


def _missing(field: str, reason: str) -> PydanticCustomError:
    """A whole-model rule's error, located at the field a client should fix rather than at the body."""
    return PydanticCustomError("profile_request", "{reason}", {"reason": reason, "path": (field,)})


def _value(v: Any, *path: str) -> str | list[str]:
    if isinstance(v, str):
        items = [v]
    elif isinstance(v, list) and v and all(isinstance(i, str) for i in v) and len(v) <= MAX_LIST_ITEMS:
        items = v
    else:
        raise _bad(f"a slot's value is a string or a list of 1 to {MAX_LIST_ITEMS} strings", *path)
    for item in items:
        if not item.strip() or len(item) > MAX_VALUE_CHARS:
            raise _bad(f"must be 1 to {MAX_VALUE_CHARS} characters (remove a slot with remove_fields)", *path)
        try:
            _no_control_chars(item)
        except ValueError as exc:
            raise _bad(str(exc), *path) from None
    return v.strip() if isinstance(v, str) else [i.strip() for i in v]


def _name(k: Any, *path: str) -> str:
    if not isinstance(k, str) or not k.strip() or len(k) > 128 or any(ord(c) < 32 for c in k):
        raise _bad("a slot or group name is 1 to 128 printable characters", *path)
    return k.strip()


def _edit(slot: str, v: Any, group: str, *path: str) -> SlotEdit:
    if isinstance(v, dict) and "value" in v:
        extra = set(v) - {"value", "algorithm_updatable"}
        if extra:
            raise _bad(f"unknown keys {sorted(extra)}; a slot takes value and algorithm_updatable", *path)
        lock = v.get("algorithm_updatable")
        if lock is not None and not isinstance(lock, bool):
            raise _bad("must be true or false", *path, "algorithm_updatable")
        return SlotEdit(slot, _value(v["value"], *path, "value"), group, lock)
    return SlotEdit(slot, _value(v, *path), group)


def flatten_metadata(metadata: dict[str, Any]) -> list[SlotEdit]:
    """One edit per slot of MemOS's ``metadata`` (see the module docstring); PydanticCustomError naming the path."""
    out: dict[str, SlotEdit] = {}
    for key, v in metadata.items():
        name = _name(key, key)
        if isinstance(v, dict) and "value" not in v:  # a group of slots
            if not v:
                raise _bad("an empty group; give its slots", key)
            edits = [_edit(_name(k, key, k), sv, name, key, k) for k, sv in v.items()]
        else:
            edits = [_edit(name, v, "", key)]
        for e in edits:
            if e.slot in out:
                raise _bad(f"the slot {e.slot!r} is given twice", key)
            out[e.slot] = e
    if len(out) > MAX_SLOTS:
        raise _bad(f"{len(out)} slots in one edit, the limit is {MAX_SLOTS}")
    return list(out.values())


def _check_metadata(v: dict[str, Any]) -> dict[str, Any]:
    flatten_metadata(v)
    return v


ProfileMetadata = Annotated[
    dict[str, Any],
    AfterValidator(_check_metadata),
    Field(description='slot -> value, or {"value", "algorithm_updatable"}; slots may be grouped {group: {slot: ...}}'),
]


class _ProfileRequest(_ClientRequest):
    # Unknown keys are accepted and named in data.ignored, as on the other MemOS routes.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)


class _OwnerRequest(_ProfileRequest):
    user_id: SafeText | None = _OWNER
    agent_id: SafeText | None = _OWNER

    @model_validator(mode="after")
    def _owner(self) -> Any:
        if self.user_id is None and self.agent_id is None:
            raise _missing("user_id", "give user_id or agent_id (whose profile)")
        return self


class EditProfileRequest(_OwnerRequest):
    profile_template_id: SafeText | None = Field(
        None, min_length=1, max_length=256, description="bind this template too"
    )
    metadata: ProfileMetadata | None = None
    remove_fields: list[SlotName] | None = Field(None, max_length=MAX_SLOTS, description="slots to remove")

    @model_validator(mode="after")
    def _something(self) -> EditProfileRequest:
        if not self.metadata and not self.remove_fields and self.profile_template_id is None:
            raise _missing("metadata", "give metadata (slots to set) or remove_fields (slots to remove)")
        return self

    def edits(self) -> list[SlotEdit]:
        return flatten_metadata(self.metadata or {})


class DeleteProfileRequest(_OwnerRequest):
    profile_template_id: SafeText | None = Field(None, min_length=1, max_length=256)


class SlotDefIn(_ProfileRequest):
    ALIASES: ClassVar[dict[str, str]] = {"field": "name", "key": "name"}
    name: SlotName
    description: SafeText = Field("", max_length=1000, description="what the slot holds (the model is told)")
    group: SafeText = Field("", max_length=128)
    algorithm_updatable: bool = Field(True, description="false: only /edit/profile changes it")


class BindItem(_ProfileRequest):
    ALIASES: ClassVar[dict[str, str]] = {"fields": "slots"}
    user_id: SafeText | None = _OWNER
    agent_id: SafeText | None = _OWNER
    profile_template_id: SafeText = Field(min_length=1, max_length=256)
    slots: list[SlotDefIn] | None = Field(
        None, min_length=1, max_length=MAX_SLOTS, description="define (or redefine) the template's slots"
    )

    @model_validator(mode="after")
    def _owner(self) -> BindItem:
        if self.user_id is None and self.agent_id is None:
            raise _missing("user_id", "give user_id or agent_id (whose profile)")
        names = [d.name for d in self.slots or []]
        if len(names) != len(set(names)):
            raise _missing("slots", "each slot name once")
        return self


class BindProfileTemplateRequest(_ProfileRequest):
    bind_list: list[BindItem] = Field(min_length=1, max_length=20)
