"""The chaos suite's own services: a RabbitMQ node, a redis-server, an embedded Postgres and the stack (the fake LLM
is ``fakes.llm``).

Every fault restarts one of these and nothing else: other people on the machine use the system broker (5672), Redis
(6379) and the shared embedded Postgres (54329), so the suite never touches them. Each service here runs on a free
port with its state under the run's temporary directory, and is stopped by its own handle (a pid we started, a node
name we chose), never by a name pattern.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cli.harness import free_port
from cli.stack import Stack

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian: the real scripts; /usr/sbin wraps them in `su rabbitmq`


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL to its process group (our own session: nothing else is in it)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _rabbit_tool(name: str) -> str:
    path = RABBITMQ_BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the rabbitmq-server package")
    return found


class RabbitNode:
    """A second RabbitMQ node of our own: own node name, ports, config, data and Erlang cookie (HOME)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = f"memos-chaos-{os.getpid()}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0
        root.mkdir(parents=True, exist_ok=True)
        # Our own config file: the system one pins listeners.tcp to 5672, which is the shared broker's.
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@...)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.root),  # the Erlang cookie lives here, for the node and for rabbitmqctl alike
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout: float = 120.0) -> float:
        """Start the node; return when it accepts connections: seconds taken."""
        self.launch()
        return self.wait(timeout)

    def launch(self) -> None:
        """Start the node in the foreground (a child of ours) without waiting for it to boot."""
        self._t0 = time.monotonic()
        log = open(self.root / "server.out", "ab")  # noqa: SIM115  (the child keeps its own descriptor)
        self.proc = subprocess.Popen(
            [_rabbit_tool("rabbitmq-server")],
            env=self.env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait(self, timeout: float = 120.0) -> float:
        """Until the launched node accepts connections: seconds since the launch."""
        t0 = self._t0
        assert self.proc is not None
        while not port_open(self.port):
            if self.proc.poll() is not None:
                tail = (self.root / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"RabbitMQ node {self.node} exited with {self.proc.returncode}:\n{tail}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"RabbitMQ node {self.node} not listening after {timeout:.0f}s")
            time.sleep(0.1)
        return time.monotonic() - t0

    def stop(self) -> None:
        """``rabbitmqctl -n <node> stop``: a clean shutdown (durable queues and persistent messages are kept)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            subprocess.run(
                [_rabbit_tool("rabbitmqctl"), "-n", self.node, "stop"],
                env=self.env(),
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
            )
        _stop_process(self.proc, timeout=60)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and port_open(self.port)


class RedisServer:
    """Our own redis-server on a free port, nothing persisted (``--save ''``), a child of ours."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.root),
        ]
        log = open(self.root / "redis.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def info(self) -> dict[str, Any]:
        info = self.client().info("server")
        return {"pid": int(info["process_id"]), "run_id": str(info["run_id"]), "keys": int(self.client().dbsize())}

    def flush_and_stop(self) -> int:
        """FLUSHALL, then stop the server; returns how many keys were flushed."""
        keys = int(self.client().dbsize())
        self.client().flushall()
        self.stop()
        return keys

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None


@dataclass
class ChaosStack(Stack):
    """The project's Stack (workers, relay, API as child processes, each logging to its own file in ``log_dir``),
    with SIGKILL and restart of one worker: the supervisor's part in the worker-kill fault."""

    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.commands[name] = (cmd, env)
        super()._spawn(name, cmd, env)

    def kill_and_restart(self, name: str) -> tuple[int, int]:
        """SIGKILL the child (no shutdown, no acks: its unacknowledged task goes back to the queue) and start
        a new one with the same command, as a supervisor would. Returns (old pid, new pid)."""
        i, proc = next((i, p) for i, (n, p) in enumerate(self.procs) if n == name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        cmd, env = self.commands[name]
        new = self._popen(name, cmd, env)
        self.procs[i] = (name, new)
        return proc.pid, new.pid
