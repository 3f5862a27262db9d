"""Starting and stopping the single-machine stack: the database, workers, relay and API as child processes.

``up`` and ``demo`` use this; every child gets the same settings through its environment, so what one process
sees the others see too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES, QUEUES
from memos_pipeline.storage import migrate, pgserver


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = dict(os.environ)
    for name, f in Settings.model_fields.items():
        alias = f.validation_alias.choices[0] if f.validation_alias is not None else None  # type: ignore[union-attr]
        value = getattr(settings, name)
        if alias is None or value is None:
            continue
        env[str(alias)] = str(value).lower() if isinstance(value, bool) else str(value)
    env["MEMOS_HOME"] = str(settings.home.resolve())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def worker_command(
    queue: str, settings: Settings, concurrency: int | None = None, pool: str | None = None
) -> list[str]:
    spec = QUEUES[queue]
    default_pool, default_conc = spec.pool, spec.concurrency or os.cpu_count() or 1
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery",
        "worker",
        "-Q",
        settings.queue(queue),
        "-n",
        f"{settings.queue(queue)}@%h",
        "-P",
        pool or default_pool,
        "-c",
        str(concurrency or default_conc),
        "--without-mingle",
        "--without-gossip",
        "-l",
        settings.log_level,
    ]


def api_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api:create_app()",
        "-b",
        f"{settings.api_host}:{settings.api_port}",
        "-w",
        str(settings.api_workers),
        "-k",
        "gthread",
        "--threads",
        str(settings.api_threads),
        "--timeout",
        "120",
        "--graceful-timeout",
        "10",
    ]


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
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    started_db: bool = False

    def start(self) -> None:
        self.started_db = pgserver.start(self.settings)
        migrate.upgrade(self.settings)
        env = settings_env(self.settings)
        out = subprocess.DEVNULL if self.quiet else None
        for q in self.queues:
            self._spawn(f"worker:{q}", worker_command(q, self.settings), env, out)
        if self.relay:
            self._spawn("relay", relay_command(), env, out)
        if self.api:
            self._spawn("api", api_command(self.settings), env, out)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], out: int | None) -> None:
        # New process group: Ctrl-C reaches us once, and we stop the children in order.
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
        self.procs.append((name, proc))

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every queue has a consumer and the API answers, or raise naming what is not up."""
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
        if pending:
            raise RuntimeError(f"workers not ready after {timeout}s: {sorted(pending)}")
        while self.api and not _port_open(self.settings.api_host, self.settings.api_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start listening")
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
        self.procs.clear()
        if stop_db if stop_db is not None else self.started_db:
            pgserver.release(self.settings)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0
