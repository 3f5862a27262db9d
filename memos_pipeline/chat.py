"""Chat with memory (POST /chat): the prompt built from what the search found, and the answer from the configured
OpenAI-compatible LLM, whole or streamed.

Pure prompt building (``build_messages``) plus two thin calls to the model. Unlike the extraction stages
(``llm.LLMClient``: JSON answers at temperature 0) a chat answers in free text with the caller's sampling
parameters, so it has its own call here; the caller's model name, if any, replaces the configured one.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import openai
from openai import Stream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from memos_pipeline.config import Settings
from memos_pipeline.llm import RETRYABLE
from memos_pipeline.search.recall import PREFERENCE_NOTE

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SYSTEM = (
    "You are a helpful assistant with a long-term memory of this user. Answer the user's message; use the "
    "memories below when they help, and say so when you do not know."
)
# The fake LLM (fakes/llm.py) recognises a chat by this heading; memory lines start with "[M<n>]".
MEMORY_HEADING = "# Memories of this user"
MEMORY_GUIDE = (
    "Each memory is one line: [M<n>] (date it was stored) text. They come from earlier conversations; "
    "a newer memory outweighs an older one it contradicts. Do not invent memories."
)
PREFERENCE_HEADING = "# Preferences of this user"
MEMORY_CHARS = 2000  # one memory's share of the prompt: a long span is cut, the rest of the list still fits


@dataclass(frozen=True)
class ChatParams:
    """What the caller may set for one completion; None: the model's default."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


@dataclass
class Answer:
    text: str
    usage: dict[str, int] = field(default_factory=dict)


def _one_line(text: str, limit: int = MEMORY_CHARS) -> str:
    # A raw window is several turns, one per line: joined so that every memory stays one line of the prompt.
    flat = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def memory_lines(memories: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for i, m in enumerate(memories, 1):
        when = (m.get("create_time") or "")[:10]
        value = m.get("memory_value") or ""
        if m.get("kind") == "fact" and m.get("memory_key"):
            value = f"{m['memory_key']}: {value}"
        lines.append(f"[M{i}]" + (f" ({when})" if when else "") + f" {_one_line(value)}")
    return lines


def system_prompt(
    memories: Sequence[dict[str, Any]], preferences: Sequence[dict[str, Any]], custom: str | None = None
) -> str:
    """The caller's system prompt (or ours), then the memories and preferences the search found."""
    parts = [(custom or DEFAULT_SYSTEM).strip(), "", MEMORY_HEADING, MEMORY_GUIDE]
    parts += memory_lines(memories) or ["(none found)"]
    if preferences:
        parts += ["", PREFERENCE_HEADING, PREFERENCE_NOTE]
        for p in preferences:
            kind = "explicit" if p.get("preference_type") == "explicit_preference" else "implicit"
            parts.append(f"- ({kind}) {_one_line(p.get('preference') or '')}")
    return "\n".join(parts)


def build_messages(
    query: str,
    memories: Sequence[dict[str, Any]],
    preferences: Sequence[dict[str, Any]],
    *,
    custom_system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> list[dict[str, str]]:
    """The completion's messages: system (with the memories), the conversation's recent turns, the query.
    ``history``: (role, content) pairs, oldest first; only user and assistant turns reach the model (a tool turn
    without its call is invalid in the OpenAI protocol, a stored system turn is not the caller's instruction)."""
    out = [{"role": "system", "content": system_prompt(memories, preferences, custom_system)}]
    out += [{"role": r, "content": c} for r, c in history if r in ("user", "assistant") and c]
    out.append({"role": "user", "content": query})
    return out


@functools.cache
def _client(base_url: str, api_key: str, timeout: float) -> openai.OpenAI:
    # The client's own retries off, as in llm.py: one policy (``_retrying``) governs every call to the model.
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)


def client(settings: Settings) -> openai.OpenAI:
    if not settings.llm_enabled:
        raise RuntimeError("no LLM configured: set MEMOS_LLM_BASE_URL and MEMOS_LLM_MODEL")
    return _client(str(settings.llm_base_url), settings.llm_api_key or "none", settings.llm_timeout_s)


def _retrying(settings: Settings, call: Callable[[], T]) -> T:
    """``call()``, again on a transient error (429, 5xx, timeout, unreachable) up to MEMOS_LLM_MAX_RETRIES times
    with llm.py's backoff; a chat waits in the request, where a short wait beats an error for a blip."""
    attempt = 0
    while True:
        try:
            return call()
        except RETRYABLE as exc:
            if attempt >= settings.llm_max_retries:
                raise
            attempt += 1
            delay = random.uniform(0, min(8.0, 0.25 * 2**attempt))  # full jitter, as llm.py
            log.warning("chat LLM call failed (%s), retry %d in %.2fs", type(exc).__name__, attempt, delay)
            time.sleep(delay)


def _options(params: ChatParams) -> dict[str, Any]:
    given = {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
    return {k: v for k, v in given.items() if v is not None}


def complete(settings: Settings, messages: list[dict[str, str]], params: ChatParams) -> Answer:
    # cast: our plain dicts are the protocol's message params (the client's TypedDicts), and the options are
    # only the ones given, which its overloads cannot tell from their signature.
    resp = cast(
        ChatCompletion,
        _retrying(
            settings,
            lambda: client(settings).chat.completions.create(
                model=params.model, messages=cast(Any, messages), **_options(params)
            ),
        ),
    )
    usage = resp.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) if resp.usage else {}
    return Answer(resp.choices[0].message.content or "", usage)


def open_stream(settings: Settings, messages: list[dict[str, str]], params: ChatParams) -> Iterator[str]:
    """The answer's text pieces as the model writes them. The request is sent here, before the first piece is
    read, so that an unreachable or refusing model is an error of this call (a proper HTTP status), not of a
    stream already under way."""
    # Retried until the stream opens; a stream broken after its first pieces is not retried (they were sent).
    stream = cast(
        Stream[ChatCompletionChunk],
        _retrying(
            settings,
            lambda: client(settings).chat.completions.create(
                model=params.model, messages=cast(Any, messages), stream=True, **_options(params)
            ),
        ),
    )

    def pieces() -> Iterator[str]:
        with stream:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content

    return pieces()
