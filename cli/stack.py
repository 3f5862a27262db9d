"""Starting and stopping the single-machine stack: the database, workers, relay and API as child processes.

``up`` and ``demo`` use this; every child gets the same settings through its environment, so what one process
sees the others see too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES, QUEUES
from memos_pipeline.storage import migrate, pgserver


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings: an unset (None) setting is unset
    there too, so a MEMOS_DATABASE_URL exported in the shell cannot send a child of ``with_overrides(database_url=
    None)`` (the chaos suite's own Postgres) to the shared database."""
    env = dict(os.environ)
    for name, f in Settings.model_fields.items():
        alias = f.validation_alias.choices[0] if f.validation_alias is not None else None  # type: ignore[union-attr]
        value = getattr(settings, name)
        if alias is None:
            continue
        if value is None:
            env.pop(str(alias), None)
        else:
            env[str(alias)] = str(value).lower() if isinstance(value, bool) else str(value)
    env["MEMOS_HOME"] = str(settings.home.resolve())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def worker_command(
    queue: str, settings: Settings, concurrency: int | None = None, pool: str | None = None
) -> list[str]:
    spec, name = QUEUES[queue], settings.queue(queue)
    concurrency = concurrency or spec.concurrency or os.cpu_count() or 1
    celery = "-m celery -A workers.celery worker --without-mingle --without-gossip"
    opts = ["-Q", name, "-n", f"{name}@%h", "-P", pool or spec.pool, "-c", str(concurrency), "-l", settings.log_level]
    if spec.prefetch != 1:
        opts += ["--prefetch-multiplier", str(spec.prefetch)]
    return [sys.executable, *celery.split(), *opts]


def api_command(settings: Settings, app: str = "api:create_app()", *extra: str) -> list[str]:
    bind = f"{settings.api_host}:{settings.api_port}"
    opts = ["-b", bind, "-w", str(settings.api_workers), "-k", "gthread", "--threads", str(settings.api_threads)]
    return [sys.executable, "-m", "gunicorn", app, *opts, "--timeout", "120", "--graceful-timeout", "10", *extra]


def relay_command() -> list[str]:
    return [sys.executable, "-m", "cli", "relay"]


@dataclass
class Stack:
    settings: Settings
    queues: Iterable[str] = CORE_QUEUES
    api: bool = True
    # False: workers only, beside a stack that already runs the relay on this database (a relay publishes the
    # database's whole outbox to its own queues, so a second one with another prefix would take others' rows).
    relay: bool = True
    quiet: bool = False
    log_dir: Path | None = None  # each child's output to <log_dir>/<name>.log (overrides quiet)
    env: dict[str, str] = field(default_factory=dict)  # on top of the settings' environment
    api_app: str = "api:create_app()"  # the gunicorn app spec
    api_args: Sequence[str] = ()  # more gunicorn options (an access log)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    started_db: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start(self) -> None:
        self.started_db = pgserver.start(self.settings)
        migrate.upgrade(self.settings)
        env = {**settings_env(self.settings), **self.env}
        for q in self.queues:
            self._spawn(f"worker:{q}", worker_command(q, self.settings), env)
        if self.relay:
            self._spawn("relay", relay_command(), env)
        if self.api:
            self._spawn("api", api_command(self.settings, self.api_app, *self.api_args), env)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.procs.append((name, self._popen(name, cmd, env)))

    def _popen(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # New process group: Ctrl-C reaches us once, and we stop the children in order.
        if self.log_dir is None:
            out = subprocess.DEVNULL if self.quiet else None
            return subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name.replace(':', '-')}.log").open("ab") as log:  # the child keeps its own fd
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every queue has a consumer and the API answers HTTP, or raise naming what is not up."""
        from memos_pipeline.celery_app import make_celery

        app = make_celery(self.settings)
        deadline = time.monotonic() + timeout
        pending = set(self.queues)
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            while pending and time.monotonic() < deadline:
                self._check_alive()
                for q in list(pending):
                    try:
                        ok = channel.queue_declare(self.settings.queue(q), passive=True).consumer_count > 0
                    except Exception:
                        channel = conn.channel()
                        ok = False
                    if ok:
                        pending.discard(q)
                time.sleep(0.2)
        app.close()
        if pending:
            raise RuntimeError(f"workers not ready after {timeout}s: {sorted(pending)}")
        while self.api and not _answers(self.base_url + "/health"):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API at {self.base_url} did not answer within {timeout}s")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode}")

    def stop(self, stop_db: bool | None = None) -> None:
        """API first (no new work), then workers (finish the current task: acks_late), then the database."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()
        if stop_db if stop_db is not None else self.started_db:
            pgserver.release(self.settings)


def _answers(url: str) -> bool:
    """Any HTTP answer (a gunicorn worker serves the app), whatever the status: /health says 503 while a backing
    service is down, which is for the caller to judge, not a reason to wait."""
    import requests

    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return True
