"""What we ask the LLM, and what we accept back: prompts, output schemas and semantic checks for the MemReader
(facts) and the preference extractor. Pure: the caller passes an ``LLMClient``.

Messages are shown to the model as ``[m0]``, ``[m1]``...: short local ids it can cite without copying our UUIDs,
mapped back to the client's message ids afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from memos_pipeline.text.chunking import Turn
from memos_pipeline.text.dates import render_chat_time

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def mostly_cjk(text: str) -> bool:
    """True when CJK ideographs are at least a third of the letters: the conversation's language is Chinese."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return cjk > 0 and cjk * 3 >= cjk + latin


def render_for_llm(turns: Sequence[Turn]) -> str:
    lines = []
    for i, t in enumerate(turns):
        # The canonical date with its weekday, whatever the client's format: the model resolves "yesterday" or
        # "last Friday" from it, and an epoch number would be unreadable to it.
        when = f" ({render_chat_time(t.chat_time)})" if t.chat_time else ""
        lines.append(f"[m{i}]{when} {t.speaker}: {t.content}")
    return "\n".join(lines)


def map_sources(refs: Sequence[str], turns: Sequence[Turn]) -> list[str]:
    out: list[str] = []
    for r in refs:
        i = int(r.strip("[] m"))
        if turns[i].source_id not in out:
            out.append(turns[i].source_id)
    return out


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


# ------------------------------------------------------------------------------------------------ facts


class FactOut(_Out):
    memory_key: str = Field(min_length=1, max_length=200)
    memory_value: str = Field(min_length=1, max_length=2000)
    memory_type: Literal["LongTermMemory", "UserMemory"]
    tags: list[str] = Field(default_factory=list, max_length=10)
    sources: list[str] = Field(min_length=1)


class FactsOut(_Out):
    memories: list[FactOut] = Field(max_length=50)


FACTS_SYSTEM = """You are MemReader, the extraction stage of a long-term memory service for an AI assistant.
From the conversation, extract the facts worth remembering for future conversations with this user.

Rules:
1. Each fact stands alone: say who it is about ("the user" / "用户" for the user, names for other people); no
   pronouns whose referent is outside the fact.
2. Resolve relative times ("yesterday", "next Friday", "去年", "明天") to absolute dates using the time of the
   message they occur in, e.g. "yesterday" in a message of 2023-05-08 becomes 2023-05-07.
3. memory_type: "UserMemory" for facts about the user (identity, plans, decisions, relationships, possessions,
   habits); "LongTermMemory" for facts about the world, events and other people.
4. Write every fact in the language of the conversation: a Chinese conversation gives Chinese facts.
5. memory_key: a short title (at most 10 words). memory_value: the complete fact in one or two sentences.
   tags: 1 to 5 short topic keywords, in the conversation's language.
6. sources: the ids of the messages the fact comes from, as written, e.g. ["m0", "m2"].
7. Do not invent anything. Skip greetings and small talk; an assistant's suggestion is a fact only if the user
   accepted it.

Answer with one JSON object and nothing else:
{"memories": [{"memory_key": "...", "memory_value": "...", "memory_type": "UserMemory", "tags": ["..."],
"sources": ["m0"]}]}
If nothing is worth remembering, answer {"memories": []}."""


def facts_prompt(turns: Sequence[Turn], user_id: str) -> str:
    return f"Conversation of user {user_id!r}:\n{render_for_llm(turns)}"


def check_facts(out: FactsOut, turns: Sequence[Turn]) -> None:
    """Semantic rules the schema cannot express; a violation triggers the repair round."""
    chinese = mostly_cjk(" ".join(t.content for t in turns))
    for i, f in enumerate(out.memories):
        _check_refs(f.sources, len(turns), f"memories[{i}].sources")
        if chinese and not mostly_cjk(f.memory_value):
            raise ValueError(f"memories[{i}].memory_value must be written in Chinese, the conversation's language")


def _check_refs(refs: Sequence[str], n: int, where: str) -> None:
    for r in refs:
        m = re.fullmatch(r"\[?m(\d+)\]?", r.strip())
        if not m or int(m.group(1)) >= n:
            raise ValueError(f"{where}: {r!r} is not a message id; use m0..m{n - 1}")


# ------------------------------------------------------------------------------------------------ preferences


class ExplicitOut(_Out):
    preference: str = Field(min_length=1, max_length=1000)
    sources: list[str] = Field(min_length=1)


class ImplicitOut(_Out):
    preference: str = Field(min_length=1, max_length=1000)
    reasoning: str = Field(min_length=1, max_length=2000)
    sources: list[str] = Field(min_length=1)


class PreferencesOut(_Out):
    explicit_preferences: list[ExplicitOut] = Field(default_factory=list, max_length=30)
    implicit_preferences: list[ImplicitOut] = Field(default_factory=list, max_length=30)


PREFERENCES_SYSTEM = """You extract a user's preferences from a conversation, for an AI assistant that
personalises its future answers.

- explicit_preferences: what the user states or chooses directly ("I prefer window seats", "我选七天").
  Write each as a statement about the user ("The user chose Hotel 7 Days" / "用户选择了七天酒店").
- implicit_preferences: what the user's choices and behaviour suggest without saying it (someone who picks
  the cheapest hotel in a list may prefer budget hotels). Give each a `reasoning` that cites the evidence.
  Only infer what the evidence supports.
- Write in the language of the conversation; sources are message ids as written, e.g. ["m2"].

Answer with one JSON object and nothing else:
{"explicit_preferences": [{"preference": "...", "sources": ["m2"]}],
 "implicit_preferences": [{"preference": "...", "reasoning": "...", "sources": ["m1", "m2"]}]}
Use empty lists when there is nothing."""


def check_preferences(out: PreferencesOut, turns: Sequence[Turn]) -> None:
    chinese = mostly_cjk(" ".join(t.content for t in turns))
    items: list[tuple[str, ExplicitOut | ImplicitOut]] = [
        *((f"explicit_preferences[{i}]", p) for i, p in enumerate(out.explicit_preferences)),
        *((f"implicit_preferences[{i}]", p) for i, p in enumerate(out.implicit_preferences)),
    ]
    for where, p in items:
        _check_refs(p.sources, len(turns), f"{where}.sources")
        if chinese and not mostly_cjk(p.preference):
            raise ValueError(f"{where}.preference must be written in Chinese, the conversation's language")


# ------------------------------------------------------------------------------------------------ fine adder


class MergeDecision(_Out):
    action: Literal["new", "duplicate", "update", "conflict"]
    target: str | None = None  # "e0".. for duplicate/update/conflict
    merged_value: str | None = Field(None, max_length=2000)


MERGE_SYSTEM = """You maintain a user's long-term memory. Compare a NEW memory with the EXISTING memories of
the same user and decide one action:
- "new": it adds information none of them holds.
- "duplicate": an existing memory already says the same thing (target = its id).
- "update": it refines or extends an existing memory (target = its id; merged_value = one memory that
  combines both, in the same language).
- "conflict": it contradicts an existing memory; the NEW one is more recent and wins (target = its id;
  merged_value = the corrected memory).
Answer with one JSON object only: {"action": "...", "target": "e0" or null, "merged_value": "..." or null}"""


def merge_prompt(new_value: str, existing: Sequence[str]) -> str:
    lines = "\n".join(f"[e{i}] {v}" for i, v in enumerate(existing))
    return f"NEW: {new_value}\nEXISTING:\n{lines}"


def check_merge(out: MergeDecision, n_existing: int) -> None:
    if out.action == "new":
        return
    m = re.fullmatch(r"\[?e(\d+)\]?", (out.target or "").strip())
    if not m or int(m.group(1)) >= n_existing:
        raise ValueError(f"target: must be one of e0..e{n_existing - 1} for action {out.action!r}")
    if out.action in ("update", "conflict") and not out.merged_value:
        raise ValueError(f"merged_value: required for action {out.action!r}")


def target_index(out: MergeDecision) -> int:
    return int((out.target or "").strip("[] e"))
