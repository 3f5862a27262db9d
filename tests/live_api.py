"""The API as a real gunicorn process on a free port, exactly what ``memos-pipeline api`` runs (``cli.harness``'s
``api_server``), for tests that need real HTTP or the process's own log output.

Not a fixture module: test modules wrap ``run_api`` in their own fixtures (``from live_api import run_api``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.harness import api_server
from memos_pipeline.config import Settings


@contextmanager
def run_api(settings: Settings, log: Path | None = None, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start gunicorn serving ``api:create_app()`` with these settings (``extra_env`` on top); yield its base URL once
    it answers. Its output goes to ``log``, which must be named ``api.log`` (or nowhere); stopped on exit."""
    assert log is None or log.name == "api.log", "the harness names a child's log after it: <dir>/api.log"
    with api_server(settings, log_dir=log.parent if log else None, env=extra_env or {}) as stack:
        yield stack.base_url
