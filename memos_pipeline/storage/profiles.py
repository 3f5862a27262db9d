"""User profiles: data access (tables in migration 0009, models ``ProfileTemplate``, ``ProfileInstance``,
``ProfileSlot``).

A profile belongs to an owner: a user (``agent_id`` "") or a user's agent (MemOS lets either hold one; an agent's
own profile without a user has ``user_id`` ""). Its slots are versioned: ``write_slot`` archives the current
version and writes the next, so the history stays and an unchanged value writes nothing (which is what makes a
replayed stage or a repeated edit harmless). ``algorithm_updatable`` false locks a slot against the memreader: only
an edit changes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.storage import db
from memos_pipeline.storage.models import ProfileInstance, ProfileSlot, ProfileTemplate

SlotValue = str | list[str]


@dataclass(frozen=True)
class SlotDef:
    """A slot a profile has: what the model is told to fill, what the rules may fill."""

    name: str
    description: str = ""
    group: str = ""
    algorithm_updatable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "group": self.group,
            "algorithm_updatable": self.algorithm_updatable,
        }


# The slots of a profile no template defines (issue 11).
DEFAULT_SLOTS = (
    SlotDef("name", "what the user is called", "basic"),
    SlotDef("location", "where the user lives (city, country)", "basic"),
    SlotDef("occupation", "the user's job or role", "basic"),
    SlotDef("languages", "languages the user speaks (a list)", "basic"),
    SlotDef("family", "the user's family members, e.g. 'daughter: Mia' (a list)", "basic"),
)
LIST_SLOTS = frozenset({"languages", "family"})  # the rules add to these instead of replacing them


@dataclass(frozen=True)
class Owner:
    tenant_id: uuid.UUID
    user_id: str
    agent_id: str = ""

    def where(self, model: Any) -> tuple[Any, ...]:
        return (model.tenant_id == self.tenant_id, model.user_id == self.user_id, model.agent_id == self.agent_id)


def lock(s: Session, owner: Owner) -> None:
    """Serialise writers of one profile to the end of the transaction (the memreader and an edit at once)."""
    key = f"profile/{owner.tenant_id}/{owner.user_id}/{owner.agent_id}"
    s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})


# ---------------------------------------------------------------- templates and instances


def get_template(s: Session, tenant_id: uuid.UUID, template_id: str) -> ProfileTemplate | None:
    return s.execute(
        select(ProfileTemplate).where(
            ProfileTemplate.tenant_id == tenant_id, ProfileTemplate.template_id == template_id
        )
    ).scalar_one_or_none()


def put_template(s: Session, tenant_id: uuid.UUID, template_id: str, slots: list[SlotDef]) -> None:
    """Create the template, or replace its slot definitions (profiles bound to it keep their values)."""
    defs = [d.as_dict() for d in slots]
    s.execute(
        insert(ProfileTemplate)
        .values(tenant_id=tenant_id, template_id=template_id, slots=defs)
        .on_conflict_do_update(
            constraint="uq_profile_templates_tenant_template", set_={"slots": defs, "updated_at": db.now()}
        )
    )


def get_instance(s: Session, owner: Owner) -> ProfileInstance | None:
    return s.execute(select(ProfileInstance).where(*owner.where(ProfileInstance))).scalar_one_or_none()


def ensure_instance(s: Session, owner: Owner, template_id: str | None = None) -> None:
    """The owner has a profile from now on; ``template_id`` (when given) is bound to it."""
    stmt = insert(ProfileInstance).values(
        tenant_id=owner.tenant_id, user_id=owner.user_id, agent_id=owner.agent_id, template_id=template_id
    )
    if template_id is None:
        s.execute(stmt.on_conflict_do_nothing(constraint="uq_profile_instances_owner"))
    else:
        s.execute(
            stmt.on_conflict_do_update(
                constraint="uq_profile_instances_owner", set_={"template_id": template_id, "updated_at": db.now()}
            )
        )


def slot_defs(s: Session, owner: Owner) -> list[SlotDef]:
    """The slots of the owner's profile: its template's, else the defaults; plus any slot an edit added."""
    inst = get_instance(s, owner)
    tpl = get_template(s, owner.tenant_id, inst.template_id) if inst and inst.template_id else None
    defs = [SlotDef(**d) for d in tpl.slots] if tpl else list(DEFAULT_SLOTS)
    known = {d.name for d in defs}
    for row in current_slots(s, owner).values():
        if row.slot not in known:
            defs.append(SlotDef(row.slot, "", row.slot_group, row.algorithm_updatable))
    return defs


# ---------------------------------------------------------------- slots


def current_slots(s: Session, owner: Owner) -> dict[str, ProfileSlot]:
    rows = s.execute(
        select(ProfileSlot)
        .where(*owner.where(ProfileSlot), ProfileSlot.status == "activated")
        .order_by(ProfileSlot.slot)
    ).scalars()
    return {r.slot: r for r in rows}


def write_slot(
    s: Session,
    owner: Owner,
    slot: str,
    value: SlotValue,
    *,
    origin: str,
    sources: list[dict[str, str]] | None = None,
    group: str | None = None,
    algorithm_updatable: bool | None = None,
    ingest_id: uuid.UUID | None = None,
) -> bool:
    """A new version of ``slot`` when its value (or lock) changes; False when nothing changed. The caller holds
    ``lock(s, owner)``; group and lock default to the current version's."""
    cur = current_slots(s, owner).get(slot)
    updatable = algorithm_updatable if algorithm_updatable is not None else (cur.algorithm_updatable if cur else True)
    if cur is not None and cur.value == value and cur.algorithm_updatable == updatable:
        return False
    last = s.execute(select(func.max(ProfileSlot.version)).where(*owner.where(ProfileSlot), ProfileSlot.slot == slot))
    version = (last.scalar_one() or 0) + 1
    if cur is not None:
        cur.status, cur.updated_at = "archived", db.now()
        s.flush()  # the archive lands before the insert: one activated version per slot (a unique index)
    s.add(
        ProfileSlot(
            tenant_id=owner.tenant_id,
            user_id=owner.user_id,
            agent_id=owner.agent_id,
            slot=slot,
            slot_group=group if group is not None else (cur.slot_group if cur else ""),
            value=value,
            version=version,
            status="activated",
            origin=origin,
            algorithm_updatable=updatable,
            sources=sources or [],
            ingest_id=ingest_id,
        )
    )
    s.flush()
    return True


def remove_slot(s: Session, owner: Owner, slot: str) -> bool:
    """The slot leaves the profile (its versions stay, the last marked deleted); False when it had none."""
    res = s.execute(
        update(ProfileSlot)
        .where(*owner.where(ProfileSlot), ProfileSlot.slot == slot, ProfileSlot.status == "activated")
        .values(status="deleted", updated_at=db.now())
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def delete_profile(s: Session, owner: Owner) -> int:
    """The owner's profile and its binding are gone (slot versions are kept, marked deleted); the number of slots
    that were current."""
    lock(s, owner)
    res = s.execute(
        update(ProfileSlot)
        .where(*owner.where(ProfileSlot), ProfileSlot.status == "activated")
        .values(status="deleted", updated_at=db.now())
    )
    inst = get_instance(s, owner)
    if inst is not None:
        s.delete(inst)
    return int(res.rowcount)  # type: ignore[attr-defined]


def slot_history(s: Session, owner: Owner, slot: str) -> list[ProfileSlot]:
    return list(
        s.execute(
            select(ProfileSlot).where(*owner.where(ProfileSlot), ProfileSlot.slot == slot).order_by(ProfileSlot.version)
        ).scalars()
    )


# ---------------------------------------------------------------- answers


def render(values: dict[str, SlotValue]) -> str:
    """The profile as one line a prompt can carry: ``name: Alice; languages: English, French``."""
    return "; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in values.items())


def profile_item(inst: ProfileInstance, slots: list[ProfileSlot]) -> dict[str, Any]:
    """One entry of ``profile_detail_list``: the values by slot, each slot's version and sources, and the profile
    as text (``memory``, as the other lists carry it)."""
    values = {r.slot: r.value for r in slots}
    times = [inst.updated_at, *(r.updated_at for r in slots)]
    return {
        "id": str(inst.id),
        "user_id": inst.user_id,
        "agent_id": inst.agent_id or None,
        "profile_template_id": inst.template_id,
        "memory_type": "ProfileMemory",
        "memory": render(values),
        "profile": values,
        "slots": [
            {
                "slot": r.slot,
                "group": r.slot_group,
                "value": r.value,
                "version": r.version,
                "origin": r.origin,
                "algorithm_updatable": r.algorithm_updatable,
                "sources": r.sources,
                "update_time": r.updated_at.isoformat(),
            }
            for r in slots
        ],
        "create_time": inst.created_at.isoformat(),
        "update_time": max(times).isoformat(),
    }


def profile_items(s: Session, tenant_id: uuid.UUID, user_id: str, agent_id: str | None = None) -> list[dict[str, Any]]:
    """The profiles a search of ``user_id`` (and ``agent_id``) shows: the user's own, and the agent's when asked;
    [] when there is none (then a search pays one indexed lookup per owner, nothing more)."""
    owners = [Owner(tenant_id, user_id)] + ([Owner(tenant_id, user_id, agent_id)] if agent_id else [])
    out = []
    for owner in owners:
        inst = get_instance(s, owner)
        if inst is not None:
            out.append(profile_item(inst, list(current_slots(s, owner).values())))
    return out
