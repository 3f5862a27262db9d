"""Secrets never reach the logs: every log record is redacted before any handler sees it.

Two kinds of redaction, both applied to the formatted message, the formatted traceback and the stack of a record:

- **known values**: the secrets this process was configured with (``MEMOS_LLM_API_KEY``, the passwords inside the
  database, broker, Redis and service URLs, Flower's ``MEMOS_FLOWER_PASSWORD`` / ``FLOWER_BASIC_AUTH``, and any
  environment variable whose name says it is a password, secret, token or API key), wherever they appear;
- **secret-shaped text**, whoever's it is: URL credentials (``scheme://user:***@host``), ``Token``/``Bearer``/
  ``Basic`` credentials, ``password=...``-style pairs (libpq conninfo, header dumps), our API keys (``mp_...``)
  and OpenAI-style keys (``sk-...``). A client's API key is never known to the server in plain text (only its
  hash is stored), so only its shape can catch it.

``install(settings)`` wraps the process's log record factory rather than adding a filter to some handlers:
Celery, gunicorn and libraries add their handlers after we start, and a filter on a logger does not see records
of its child loggers. The factory sees every record of every logger, once, before any handler.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from memos_pipeline.config import Settings

REDACTED = "***"
# A known value shorter than this is only redacted where its position says it is a secret (URL credentials,
# password=...): redacting a short word such as "guest" or "memos" everywhere would mangle ordinary log text.
MIN_VALUE_LEN = 8

# Settings fields that are secrets themselves, and those that are URLs which may carry credentials.
SECRET_FIELDS = ("llm_api_key", "embedder_api_key", "flower_password")
URL_FIELDS = (
    "database_url",
    "broker_url",
    "redis_url",
    "es_url",
    "llm_base_url",
    "embedder_base_url",
    "mos_reranker_url",
    "flower_broker_api",
)
# Environment variables whose value is a secret, by name (POSTGRES_PASSWORD, FLOWER_BASIC_AUTH, OPENAI_API_KEY...).
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|APIKEY|BASIC_AUTH|CREDENTIALS)", re.IGNORECASE)

_SECRET_KEY = (
    r"[\w-]*(?:password|passwd|pwd|secret|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|authorization)[\w-]*"
)
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:***@host (a literal @ in a password must be percent-encoded)
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\g<1>{REDACTED}@"),
    # Authorization header values: Token <key>, Bearer <token>, Basic <base64>
    (re.compile(r"\b((?:Token|Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # password=..., "api_key": "...", Authorization: ... (conninfo strings, dict and header dumps)
    (
        re.compile(
            rf"""(\b{_SECRET_KEY}['"]?\s*[:=]\s*['"]?)(?!{re.escape(REDACTED)})[^'"\s,;&}}\]]+""", re.IGNORECASE
        ),
        rf"\g<1>{REDACTED}",
    ),
    # our API keys (store.create_api_key: "mp_" + 43 url-safe characters; the 10-character prefix shown to
    # operators stays readable) and OpenAI-style keys
    (re.compile(r"\bmp_[A-Za-z0-9_\-]{20,}"), f"mp_{REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), f"sk-{REDACTED}"),
)


def url_secrets(url: str | None) -> set[str]:
    """The password of a URL's credentials, as written and percent-decoded."""
    if not url or "@" not in url:
        return set()
    try:
        password = urlsplit(url).password
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()


def secrets_from(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> set[str]:
    """Every secret value this process knows: from the settings and from the environment."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    if settings is not None:
        # getattr with a default: a field this module names may not exist in every version of Settings.
        found.update(str(v) for f in SECRET_FIELDS if (v := getattr(settings, f, None)))
        for f in URL_FIELDS:
            found |= url_secrets(getattr(settings, f, None))
    for name, value in env.items():
        if not value:
            continue
        found |= url_secrets(value)
        if SECRET_ENV.search(name):
            found.add(value)
            if "BASIC_AUTH" in name.upper():  # Flower: "user:password[,user2:password2]"
                found.update(pair.partition(":")[2] for pair in value.split(","))
    return {s for s in found if s}


class SecretFilter(logging.Filter):
    """Redacts a record in place and always lets it through (a log line is never lost to redaction)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._known: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also redact these values (short ones only where the patterns place them: see MIN_VALUE_LEN)."""
        with self._lock:
            self._values |= {s for s in secrets if len(s) >= MIN_VALUE_LEN}
            # Longest first: a secret that contains another is redacted whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        known = self._known
        if known is not None:
            text = known.sub(REDACTED, text)
        for pattern, replacement in PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact_record(record)
        except Exception:  # never let a strange record through unredacted, never break the caller
            record.msg, record.args = "[log message dropped: it could not be checked for secrets]", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _redact_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            # Formatting will fail at emit time too, and logging then prints msg and args: redact both.
            record.msg = self.redact(str(record.msg))
            record.args = tuple(self.redact(repr(a)) for a in _args(record.args))
        else:
            redacted = self.redact(message)
            if redacted != message:
                record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback they print is this redacted one.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)


def _args(args: Any) -> tuple[Any, ...]:
    if args is None:
        return ()
    return tuple(args.values()) if isinstance(args, Mapping) else tuple(args)


# The one filter of this process, once install() has run (a dict, not a global rebound by install).
_installed: dict[str, SecretFilter] = {}
_install_lock = threading.Lock()


def install(settings: Settings | None = None) -> SecretFilter:
    """Redact every log record of this process from now on. Idempotent: a second call (another app built in the
    same process) adds its secrets to the one filter instead of wrapping the factory again."""
    with _install_lock:
        flt = _installed.get("filter")
        if flt is None:
            flt = _installed["filter"] = SecretFilter()
            _wrap_factory(flt, logging.getLogRecordFactory())
        flt.add(secrets_from(settings))
        return flt


def _wrap_factory(flt: SecretFilter, inner: Callable[..., logging.LogRecord]) -> None:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        flt.filter(record)
        return record

    logging.setLogRecordFactory(factory)
