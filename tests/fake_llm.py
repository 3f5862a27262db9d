"""The fake OpenAI-compatible server now lives in ``evaluation/fake_llm.py`` (the chaos suite ships with the package
and needs it too); this module keeps the tests' imports (``from fake_llm import route_of``) and their way of
starting it (``python tests/fake_llm.py --port 0``, see ``tests/llm_fixtures.py``) working unchanged."""

from __future__ import annotations

from evaluation.fake_llm import (
    DIM,
    ERRORS,
    STATE,
    Handler,
    State,
    auto_answer,
    embed,
    is_chinese,
    main,
    parse_lines,
    route_of,
    tokens,
)

__all__ = [
    "DIM",
    "ERRORS",
    "STATE",
    "Handler",
    "State",
    "auto_answer",
    "embed",
    "is_chinese",
    "main",
    "parse_lines",
    "route_of",
    "tokens",
]

if __name__ == "__main__":
    main()
