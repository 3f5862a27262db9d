"""LLM access through the official ``openai`` client, to any OpenAI-compatible endpoint.

What this adds on top of the client: our own retry loop (exponential backoff with full jitter on 429, 5xx,
timeouts and connection errors; the client's built-in retries are off so that one policy governs), a bound on
concurrent calls per worker process, token accounting, and ``chat_json``: a JSON answer validated against a
pydantic model, with one repair round that shows the model its own error.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from memos_pipeline.config import Settings

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


class LLMOutputError(ValueError):
    """The model's answer stayed invalid after the repair round: not transient, the stage fails with this."""


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    repairs: int = 0

    def add(self, other: Usage) -> None:
        for k in ("calls", "prompt_tokens", "completion_tokens", "retries", "repairs"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("calls", "prompt_tokens", "completion_tokens", "retries", "repairs")}


@dataclass
class LLMClient:
    settings: Settings
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        s = self.settings
        if not s.llm_enabled:
            raise RuntimeError("no LLM configured: set MEMOS_LLM_BASE_URL and MEMOS_LLM_MODEL")
        self._client = openai.OpenAI(
            base_url=s.llm_base_url, api_key=s.llm_api_key or "none", timeout=s.llm_timeout_s, max_retries=0
        )

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One completion, retried on transient errors; raises the last transient error when retries run out."""
        s = self.settings
        attempt = 0
        while True:
            try:
                with _semaphore(s.llm_concurrency):
                    resp = self._client.chat.completions.create(  # type: ignore[call-overload]
                        model=s.llm_model or "",
                        messages=messages,
                        temperature=0,
                        response_format={"type": "json_object"},
                    )
            except RETRYABLE as exc:
                if attempt >= s.llm_max_retries:
                    raise
                attempt += 1
                self.usage.retries += 1
                # Full jitter: many workers hitting one rate limit must not come back in lockstep.
                delay = random.uniform(0, min(8.0, 0.25 * 2**attempt))
                log.warning("LLM call failed (%s), retry %d in %.2fs", type(exc).__name__, attempt, delay)
                time.sleep(delay)
                continue
            self.usage.calls += 1
            if resp.usage is not None:
                self.usage.prompt_tokens += resp.usage.prompt_tokens or 0
                self.usage.completion_tokens += resp.usage.completion_tokens or 0
            return resp.choices[0].message.content or ""

    def chat_json(self, system: str, user: str, model: type[M], check: Any = None) -> M:
        """A JSON answer parsed into ``model``; ``check(parsed)`` may raise ValueError for semantic rules
        (a source that does not exist, the wrong language). One repair round, then LLMOutputError."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        error = ""
        for round_ in range(2):
            text = self.chat(messages)
            try:
                parsed = model.model_validate(json.loads(_strip_fences(text)))
                if check is not None:
                    check(parsed)
                return parsed
            except (json.JSONDecodeError, ValidationError, ValueError) as exc:
                error = _short_error(exc)
                if round_ == 0:
                    self.usage.repairs += 1
                    messages += [
                        {"role": "assistant", "content": text[:4000]},
                        {
                            "role": "user",
                            "content": f"Your answer was invalid: {error}\n"
                            "Answer again with only the corrected JSON object.",
                        },
                    ]
        raise LLMOutputError(f"invalid LLM output after one repair: {error}")


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)[:500]


_SEMAPHORES: dict[int, threading.BoundedSemaphore] = {}
_SEM_LOCK = threading.Lock()


def _semaphore(n: int) -> threading.BoundedSemaphore:
    """Per-process bound on concurrent LLM calls (shared by every thread of a worker)."""
    with _SEM_LOCK:
        if n not in _SEMAPHORES:
            _SEMAPHORES[n] = threading.BoundedSemaphore(n)
        return _SEMAPHORES[n]
