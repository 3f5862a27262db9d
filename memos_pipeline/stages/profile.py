"""The profile update of the memreader stage: after an ingest's facts are written, the owner's profile slots
(name, location, ... or a bound template's) are updated from them.

- A user with a profile (a bound template, an edit, or slots the rules filled before) gets the model's update: it
  is shown the slots, their current values and the ingest's facts and preferences, and answers changed slots with
  the facts they come from. Its answer is stored like an extraction (stage ``profile``) before anything is
  written, so a redelivered task replays it instead of asking again.
- Otherwise (and when the model's answer is unusable twice) rules fill what a fact states unambiguously ("my name
  is ...", "I live in ..."), and leave the rest empty. Asking the model only for users who have a profile spares a
  model call per add to every application that never uses profiles (MemOS too updates bound profiles only).

Slots a human locked (``algorithm_updatable`` false) are never changed here. Writing an unchanged value writes
nothing (storage/profiles.py), so replays converge.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from memos_pipeline.llm import LLMClient, LLMOutputError, Usage
from memos_pipeline.stages import llm_stage
from memos_pipeline.storage import profiles
from memos_pipeline.storage.models import Memory, Preference
from memos_pipeline.storage.profiles import Owner, SlotDef, SlotValue

log = logging.getLogger(__name__)

MAX_FACTS = 60  # facts and preferences shown to the model per ingest: the most recent ones beyond this are dropped

# ------------------------------------------------------------------------------------------------ rules

_NAME = r"([A-Z][\w'-]+(?: [A-Z][\w'-]+){0,3})"
_PLACE = r"([A-Z][\w'.-]+(?:[ ,]+[A-Z][\w'.-]+){0,3})"
_SUBJ = r"(?:\bI|\b[Tt]he user)"
# Each rule: a slot and a pattern whose group 1 is the value. Only statements whose wording leaves no doubt: a
# missed slot stays empty, a wrong one would be shown to every later conversation.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name", re.compile(rf"\b(?:[Mm]y|[Tt]he user's) name is {_NAME}")),
    ("name", re.compile(rf"{_SUBJ} (?:am|is) called {_NAME}")),
    ("name", re.compile(r"(?:我叫|我的名字是|用户的名字是|用户叫)([\u4e00-\u9fff]{1,4})(?=[，。,.!！\s]|$)")),
    ("location", re.compile(rf"{_SUBJ} (?:live|lives|am living|is living) in {_PLACE}")),
    ("location", re.compile(r"(?:我住在|用户住在)([\u4e00-\u9fff]{1,10}?)(?=[，。,.!！\s]|$)")),
    ("occupation", re.compile(rf"{_SUBJ} works? as an? ([a-z][a-z -]{{1,40}}?)(?= at | in | for |[,.;!]|$)")),
    (
        "occupation",
        re.compile(
            r"\b(?:[Mm]y|[Tt]he user's) (?:job|occupation|profession) is (?:an? )?([a-z][a-z -]{1,40}?)(?=[,.;!]|$)"
        ),
    ),
    ("occupation", re.compile(r"(?:我的职业是|我是一名|用户是一名)([\u4e00-\u9fff]{1,10}?)(?=[，。,.!！\s]|$)")),
    ("languages", re.compile(rf"{_SUBJ} speaks? ((?:[A-Z][a-z]+)(?:(?:, | and |, and )[A-Z][a-z]+)*)")),
)
_FAMILY = re.compile(
    r"\b(?:[Mm]y|[Tt]he user's) (wife|husband|partner|son|daughter|mother|father|brother|sister|mom|dad)"
    rf"(?:'s name)? is (?:called |named )?{_NAME}"
)


def rule_slots(texts: Sequence[tuple[str, str]]) -> dict[str, tuple[SlotValue, list[str]]]:
    """Slots stated unambiguously in ``texts`` ((source id, text) pairs, oldest first): slot -> (value, the ids
    it came from). A later statement of a single-valued slot wins; list slots (languages, family) collect all."""
    out: dict[str, tuple[SlotValue, list[str]]] = {}

    def add(slot: str, items: list[str], sid: str) -> None:
        value, srcs = out.get(slot, ([], []))
        assert isinstance(value, list)
        new = [i for i in items if i not in value]
        if new:
            out[slot] = ([*value, *new], [*srcs, sid] if sid not in srcs else srcs)

    for sid, txt in texts:
        for slot, pattern in RULES:
            m = pattern.search(txt)
            if m is None:
                continue
            found = m.group(1).strip(" ,.")
            if slot == "languages":
                add(slot, [x for x in re.split(r",\s*(?:and\s+)?|\s+and\s+", found) if x], sid)
            elif found:
                out[slot] = (found, [sid])
        for rel, who in _FAMILY.findall(txt):
            add("family", [f"{rel.lower()}: {who}"], sid)
    return out


# ------------------------------------------------------------------------------------------------ the model


class SlotUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    slot: str = Field(min_length=1, max_length=128)
    value: str | list[str] = Field(description="the slot's whole new value")
    sources: list[str] = Field(min_length=1)


class ProfileOut(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    updates: list[SlotUpdate] = Field(default_factory=list, max_length=50)


PROFILE_SYSTEM = """You maintain the USER PROFILE of an AI assistant's user: a few named slots (name, where they
live, ...), each holding what the user's memories say about it.

You are given the slots (with what each means and its current value) and NEW FACTS learned about the user, as
[f0], [f1], ... Update the profile from the new facts:
- Change a slot only when a new fact states its value; never guess. A fact that contradicts a current value
  replaces it (the new fact is more recent).
- value: the slot's whole new value, in the language of the facts; a list of strings for slots described as a
  list (keep the current items that still hold).
- sources: the ids of the facts the value comes from, e.g. ["f0"].
- Only the slots listed; leave out slots that do not change.

Answer with one JSON object and nothing else: {"updates": [{"slot": "name", "value": "...", "sources": ["f0"]}]}
If nothing changes, answer {"updates": []}."""


def profile_prompt(defs: Sequence[SlotDef], current: dict[str, SlotValue], facts: Sequence[str]) -> str:
    lines = ["SLOTS:"]
    for d in defs:
        if not d.algorithm_updatable:
            continue  # locked by a human: not the model's to change, so not offered
        cur = current.get(d.name)
        shown = "(empty)" if cur is None else profiles.render({d.name: cur}).split(": ", 1)[1]
        lines.append(f"- {d.name}: {d.description or d.name} | current: {shown}")
    lines.append("NEW FACTS:")
    lines += [f"[f{i}] {f}" for i, f in enumerate(facts)]
    return "\n".join(lines)


def check_profile(out: ProfileOut, defs: Sequence[SlotDef], n_facts: int) -> None:
    """What the schema cannot say; a violation triggers the client's repair round."""
    allowed = {d.name for d in defs if d.algorithm_updatable}
    for i, u in enumerate(out.updates):
        if u.slot not in allowed:
            raise ValueError(f"updates[{i}].slot: {u.slot!r} is not one of the slots: {sorted(allowed)}")
        if (isinstance(u.value, str) and not u.value) or (isinstance(u.value, list) and not all(u.value)):
            raise ValueError(f"updates[{i}].value: must not be empty; leave the slot out instead")
        for r in u.sources:
            m = re.fullmatch(r"\[?f(\d+)\]?", r.strip())
            if not m or int(m.group(1)) >= n_facts:
                raise ValueError(f"updates[{i}].sources: {r!r} is not a fact id; use f0..f{n_facts - 1}")


# ------------------------------------------------------------------------------------------------ the hook


def _ingest_items(s: Session, ingest: Any) -> list[tuple[dict[str, str], str]]:
    """The ingest's facts and preferences (whatever the preference stage, running beside this one, has written),
    oldest first: (source, text)."""
    facts = s.execute(
        select(Memory.id, Memory.memory_value)
        .where(Memory.ingest_id == ingest.id, Memory.kind == "fact", Memory.status == "activated")
        .order_by(Memory.chunk_idx)
    ).all()
    prefs = s.execute(
        select(Preference.id, Preference.preference)
        .where(Preference.ingest_id == ingest.id, Preference.status == "activated")
        .order_by(Preference.created_at)
    ).all()
    items = [({"type": "memory", "id": str(i)}, v) for i, v in facts]
    items += [({"type": "preference", "id": str(i)}, v) for i, v in prefs]
    return items[-MAX_FACTS:]


def update_profile(s: Session, llm: LLMClient | None, ingest: Any, usage: Usage | None = None) -> int:
    """Update the ingest's user's profile from its facts (see the module docstring); the number of slots written.
    Commits its own work."""
    items = _ingest_items(s, ingest)
    if not items:
        return 0
    owner = Owner(ingest.tenant_id, ingest.user_id)
    has_profile = profiles.get_instance(s, owner) is not None
    defs = profiles.slot_defs(s, owner)
    updates: dict[str, tuple[SlotValue, list[dict[str, str]]]] = {}
    origin = "rule"
    if has_profile and llm is not None:
        try:
            updates = _model_updates(s, llm, ingest, owner, defs, items, usage or llm.usage)
            origin = "llm"
        except LLMOutputError as exc:
            # The facts stand; the profile falls back to what the rules can read in them.
            log.warning("profile update of ingest %s: unusable model answer, using the rules: %s", ingest.id, exc)
    if origin == "rule":
        by_id = {src["id"]: src for src, _ in items}
        found = rule_slots([(src["id"], txt) for src, txt in items])
        updates = {k: (v, [by_id[i] for i in ids]) for k, (v, ids) in found.items()}
    written = _apply(s, owner, defs, updates, origin, ingest.id)
    s.commit()
    return written


def _model_updates(
    s: Session,
    llm: LLMClient,
    ingest: Any,
    owner: Owner,
    defs: list[SlotDef],
    items: list[tuple[dict[str, str], str]],
    usage: Usage,
) -> dict[str, tuple[SlotValue, list[dict[str, str]]]]:
    current = {k: r.value for k, r in profiles.current_slots(s, owner).items()}
    texts = [t for _, t in items]

    def extract() -> ProfileOut:
        return llm.chat_json(
            PROFILE_SYSTEM,
            profile_prompt(defs, current, texts),
            ProfileOut,
            check=lambda o: check_profile(o, defs, len(texts)),
        )

    out = ProfileOut.model_validate(llm_stage.stored_or_extract(s, ingest.id, "profile", 0, extract, usage))
    return {u.slot: (u.value, [items[int(r.strip("[] f"))][0] for r in dict.fromkeys(u.sources)]) for u in out.updates}


def _apply(
    s: Session,
    owner: Owner,
    defs: list[SlotDef],
    updates: dict[str, tuple[SlotValue, list[dict[str, str]]]],
    origin: str,
    ingest_id: Any,
) -> int:
    if not updates:
        return 0
    profiles.lock(s, owner)
    by_name = {d.name: d for d in defs}
    current = profiles.current_slots(s, owner)
    written = 0
    for slot, (proposed, sources) in updates.items():
        value = proposed
        d = by_name.get(slot)
        cur = current.get(slot)
        if d is None or not d.algorithm_updatable or (cur is not None and not cur.algorithm_updatable):
            continue  # not a slot of this profile, or locked by a human
        if origin == "rule" and slot in profiles.LIST_SLOTS and cur is not None and isinstance(cur.value, list):
            assert isinstance(proposed, list)
            value = [*cur.value, *(v for v in proposed if v not in cur.value)]
        written += profiles.write_slot(
            s, owner, slot, value, origin=origin, sources=sources, group=d.group, ingest_id=ingest_id
        )
    if written:
        profiles.ensure_instance(s, owner)
    return written
