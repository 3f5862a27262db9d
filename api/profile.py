"""User profiles, MemOS-compatible: /edit/profile, /delete/profile, /bind/profile_template.

A profile's slots are filled by the memreader (memos_pipeline/stages/profile.py) and edited here; every change is
a new version of the slot (storage/profiles.py). Searches show a user's profile in ``profile_detail_list``
(api/search.py). Everything acts inside the key's tenant.
"""

from __future__ import annotations

from flask import Blueprint, Response, g

from api import ok
from api.common import body, settings
from api.errors import VALIDATION, ApiError
from memos_pipeline.profile_schemas import (
    BindProfileTemplateRequest,
    DeleteProfileRequest,
    EditProfileRequest,
    SlotDefIn,
)
from memos_pipeline.storage import profiles
from memos_pipeline.storage.db import session_scope
from memos_pipeline.storage.profiles import Owner, SlotDef

bp = Blueprint("profile", __name__)


def _unknown_template(field: str, template_id: str) -> ApiError:
    message = f"no profile template {template_id}; bind it with its slots first (/bind/profile_template)"
    return ApiError(422, VALIDATION, f"{field}: {message}", {"errors": [{"field": field, "message": message}]})


def _owner(user_id: str | None, agent_id: str | None) -> Owner:
    return Owner(g.tenant_id, user_id or "", agent_id or "")


def _defs(slots: list[SlotDefIn]) -> list[SlotDef]:
    return [SlotDef(d.name, d.description, d.group, d.algorithm_updatable) for d in slots]


@bp.post("/edit/profile")
def edit_profile() -> tuple[Response, int]:
    req = body(EditProfileRequest)
    owner = _owner(req.user_id, req.agent_id)
    written: list[str] = []
    removed: list[str] = []
    with session_scope(settings()) as s:
        if (
            req.profile_template_id is not None
            and profiles.get_template(s, g.tenant_id, req.profile_template_id) is None
        ):
            raise _unknown_template("profile_template_id", req.profile_template_id)
        profiles.lock(s, owner)
        profiles.ensure_instance(s, owner, req.profile_template_id)
        for e in req.edits():
            changed = profiles.write_slot(
                s,
                owner,
                e.slot,
                e.value,
                origin="edit",
                sources=[{"type": "edit", "id": g.request_id}],
                group=e.group or None,
                algorithm_updatable=e.algorithm_updatable,
            )
            if changed:
                written.append(e.slot)
        for slot in req.remove_fields or []:
            if profiles.remove_slot(s, owner, slot):
                removed.append(slot)
        inst = profiles.get_instance(s, owner)
        assert inst is not None  # ensured above, under the lock
        item = profiles.profile_item(inst, list(profiles.current_slots(s, owner).values()))
    return ok({"success": True, "updated": written, "removed": removed, "profile": item, "ignored": req.ignored()})


@bp.post("/delete/profile")
def delete_profile() -> tuple[Response, int]:
    req = body(DeleteProfileRequest)
    with session_scope(settings()) as s:
        existed = profiles.get_instance(s, _owner(req.user_id, req.agent_id)) is not None
        slots = profiles.delete_profile(s, _owner(req.user_id, req.agent_id))
    # As /delete/memory: deleting what is already gone succeeds (a retry), and says so.
    return ok({"success": True, "deleted": existed, "deleted_slots": slots, "ignored": req.ignored()})


@bp.post("/bind/profile_template")
def bind_profile_template() -> tuple[Response, int]:
    req = body(BindProfileTemplateRequest)
    bound = []
    # One transaction: every binding of the list is applied, or (an unknown template) none.
    with session_scope(settings()) as s:
        for i, item in enumerate(req.bind_list):
            if item.slots is not None:
                profiles.put_template(s, g.tenant_id, item.profile_template_id, _defs(item.slots))
            elif profiles.get_template(s, g.tenant_id, item.profile_template_id) is None:
                raise _unknown_template(f"bind_list[{i}].profile_template_id", item.profile_template_id)
            profiles.ensure_instance(s, _owner(item.user_id, item.agent_id), item.profile_template_id)
            bound.append(
                {"user_id": item.user_id, "agent_id": item.agent_id, "profile_template_id": item.profile_template_id}
            )
    return ok({"success": True, "bound": bound, "ignored": req.ignored()})
