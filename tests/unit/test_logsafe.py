"""The log redaction filter: known secrets and secret-shaped text never survive a record, whatever its shape."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator

import pytest

from memos_pipeline import logsafe
from memos_pipeline.config import Settings
from memos_pipeline.logsafe import REDACTED, SecretFilter, secrets_from

pytestmark = pytest.mark.unit

LLM_KEY = "llmkey-" + secrets.token_hex(12)
DB_PW = "dbpw" + secrets.token_hex(8)
BROKER_PW = "br%40ker" + secrets.token_hex(6)  # percent-encoded "@" in the URL


FLOWER_PW = "flower" + secrets.token_hex(8)
MGMT_PW = "mgmt" + secrets.token_hex(8)


def settings() -> Settings:
    return Settings(
        llm_api_key=LLM_KEY,
        flower_password=FLOWER_PW,
        flower_broker_api=f"http://admin:{MGMT_PW}@rabbit:15672/api/",
        database_url=f"postgresql://memos:{DB_PW}@db:5432/memos",
        broker_url=f"amqp://memos:{BROKER_PW}@rabbit:5672//",
        redis_url="redis://127.0.0.1:6379/0",
    )


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose handler carries the filter, writing to a string."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(SecretFilter(secrets_from(settings(), environ={})))
    logger = logging.getLogger(f"test.logsafe.{secrets.token_hex(4)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def test_secrets_from_settings_and_environment() -> None:
    env = {
        "FLOWER_BASIC_AUTH": "admin:flowerpass123,ops:opspass4567",
        "POSTGRES_PASSWORD": "pgpassword99",
        "SOME_URL": "https://u:urlsecret77@example.com/x",
        "PATH": "/usr/bin",
        "EMPTY_TOKEN": "",
    }
    found = secrets_from(settings(), environ=env)
    assert {LLM_KEY, DB_PW, BROKER_PW, "br@ker" + BROKER_PW[8:], FLOWER_PW, MGMT_PW} <= found
    assert {
        "flowerpass123",
        "opspass4567",
        "admin:flowerpass123,ops:opspass4567",
        "pgpassword99",
        "urlsecret77",
    } <= found
    assert "/usr/bin" not in found and "" not in found
    # A URL without credentials contributes nothing.
    assert not logsafe.url_secrets("redis://127.0.0.1:6379/0")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"calling the LLM with key {LLM_KEY}", LLM_KEY),
        (f"connecting to postgresql://memos:{DB_PW}@db:5432/memos", DB_PW),
        (f"bare password in an error: {DB_PW}", DB_PW),
        ("broker amqp://memos:br%40ker1234@rabbit//", "br%40ker1234"),
        ("Authorization: Token mp_" + "A" * 43, "A" * 43),
        ("headers={'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig'}", "eyJhbGciOiJIUzI1NiJ9"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("host=db port=5432 user=memos password=hunter2 dbname=memos", "hunter2"),
        ('{"api_key": "abc123xyz", "model": "m"}', "abc123xyz"),
        ("OPENAI_API_KEY=sk-proj-" + "x" * 30, "x" * 30),
        ("stray key in text mp_" + "Zz9-_" * 8, "Zz9-_" * 8),
        ("redis://:pw12@redis:6379/0 is down", "pw12"),
    ],
)
def test_redacts(captured: tuple[logging.Logger, io.StringIO], text: str, secret: str) -> None:
    logger, out = captured
    logger.warning(text)
    line = out.getvalue()
    assert secret not in line, line
    assert REDACTED in line


def test_redacts_arguments_tracebacks_and_stacks(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.info("llm %s at %s", LLM_KEY, f"postgresql://memos:{DB_PW}@db/memos")
    try:
        raise RuntimeError(f"could not connect with password {DB_PW}")
    except RuntimeError:
        logger.exception("failed for key %s", LLM_KEY)
    text = out.getvalue()
    assert LLM_KEY not in text and DB_PW not in text
    assert "RuntimeError: could not connect with password ***" in text
    assert "Traceback (most recent call last)" in text


def test_short_values_only_where_their_position_says_secret() -> None:
    flt = SecretFilter(["guest", "memos"])  # below MIN_VALUE_LEN: not redacted as bare words
    assert flt.redact("memos.workers: task received for guest user") == "memos.workers: task received for guest user"
    assert flt.redact("amqp://guest:guest@127.0.0.1:5672//") == f"amqp://guest:{REDACTED}@127.0.0.1:5672//"


def test_ordinary_text_is_untouched() -> None:
    flt = SecretFilter([LLM_KEY])
    for text in (
        "POST /search/memory 200 in 12 ms",
        "amqp://127.0.0.1:5672// connected",
        "http://127.0.0.1:8000/health ok",
        "key prefix mp_AbCdEfG shown to operators",
        "tokens: 120 prompt, 30 completion",
        "ingest 3f1c2a9e-1111-4a4a-9b9b-123456789abc done",
    ):
        assert flt.redact(text) == text


def test_a_message_that_cannot_be_formatted_is_still_redacted() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key %s and %s", (LLM_KEY,), None)
    SecretFilter([LLM_KEY]).filter(record)
    assert LLM_KEY not in str(record.msg) and all(LLM_KEY not in str(a) for a in record.args or ())


def test_stack_info_is_redacted() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "msg", (), None)
    record.stack_info = f'  File "app.py", line 3, in connect\n    dsn = "postgresql://u:{DB_PW}@db/memos"'
    SecretFilter([DB_PW]).filter(record)
    assert DB_PW not in record.stack_info and REDACTED in record.stack_info


def test_install_wraps_the_record_factory_once() -> None:
    """After install, records of any logger are redacted at creation, before any handler (added later or not)."""
    before, saved = logging.getLogRecordFactory(), dict(logsafe._installed)
    logsafe._installed.clear()  # as in a fresh process (an app built earlier in this session installed it)
    try:
        first = logsafe.install(settings())
        wrapped = logging.getLogRecordFactory()
        again = logsafe.install(Settings(llm_api_key="another-key-" + secrets.token_hex(6)))
        assert again is first and logging.getLogRecordFactory() is wrapped  # not wrapped twice
        out = io.StringIO()
        handler = logging.StreamHandler(out)  # no filter on it: the factory did the work
        logger = logging.getLogger(f"test.logsafe.install.{secrets.token_hex(4)}")
        logger.addHandler(handler)
        logger.propagate = False
        logger.error("key=%s url=%s", LLM_KEY, f"amqp://memos:{BROKER_PW}@rabbit//")
        logger.removeHandler(handler)
        assert LLM_KEY not in out.getvalue() and BROKER_PW not in out.getvalue()
        assert REDACTED in out.getvalue()
    finally:
        logging.setLogRecordFactory(before)
        logsafe._installed.clear()
        logsafe._installed.update(saved)
