"""``memos-pipeline flower``: Flower (worker and task monitoring) on our Celery app and broker, behind basic auth.

Flower shows task arguments, which hold users' messages, and its API can revoke tasks and shut workers down, so
it never runs open: without ``MEMOS_FLOWER_PASSWORD`` the command refuses to start. The credentials reach Flower
through its environment (``FLOWER_BASIC_AUTH``), never its command line, which any local user can read in ``ps``;
the password is never printed. Flower finds the workers by remote-control broadcasts (``inspect``), which work
with the ``--without-gossip --without-mingle`` our workers run with.
"""

from __future__ import annotations

import os
import sys

import click

from cli.stack import settings_env
from memos_pipeline.config import Settings, get_settings


class FlowerConfigError(ValueError):
    """The settings do not allow an authenticated Flower."""


def basic_auth(settings: Settings) -> str:
    """``user:password`` for Flower's ``--basic-auth``, or raise saying which setting is wrong (never its value)."""
    user, password = settings.flower_user, settings.flower_password
    if not password:
        raise FlowerConfigError(
            "set MEMOS_FLOWER_PASSWORD: Flower shows task arguments (users' messages) and is never started without auth"
        )
    # Flower splits a list of credentials on ",", and a basic-auth user name ends at the first ":".
    if not user or ":" in user or "," in user:
        raise FlowerConfigError("MEMOS_FLOWER_USER must be non-empty, without ':' or ','")
    if "," in password:
        raise FlowerConfigError("MEMOS_FLOWER_PASSWORD must not contain ',' (Flower splits credentials on it)")
    return f"{user}:{password}"


def flower_command(settings: Settings, address: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a Flower process for these settings."""
    env = settings_env(settings)
    # Flower reads FLOWER_<option> from its environment: ours win over anything inherited, and an inherited
    # "no auth for the API" switch has no business next to basic auth.
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    env["FLOWER_BASIC_AUTH"] = basic_auth(settings)
    if settings.flower_broker_api:
        env["FLOWER_BROKER_API"] = settings.flower_broker_api  # it holds the management password too
    else:
        env.pop("FLOWER_BROKER_API", None)
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery", "flower", f"--address={address}", f"--port={port}"]
    return argv, env


@click.command()
@click.option("--port", type=int, default=None, help="Port to listen on.  [default: MEMOS_FLOWER_PORT, 5555]")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback sends the password in clear: put TLS in front.",
)
def flower(port: int | None, address: str) -> None:
    """Run Flower against the workers of this deployment (its broker, its queue prefix), with basic auth.

    Credentials: MEMOS_FLOWER_USER (default admin) and MEMOS_FLOWER_PASSWORD (required). Its HTTP API (for
    example GET /api/workers?refresh=1) takes the same basic auth.
    """
    settings = get_settings()
    port = port or settings.flower_port
    try:
        argv, env = flower_command(settings, address, port)
    except FlowerConfigError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"Flower on http://{address}:{port}/ (basic auth, user {settings.flower_user!r})", err=True)
    if address not in ("127.0.0.1", "localhost", "::1"):
        click.secho(
            "warning: basic auth over plain HTTP beyond loopback: put a TLS proxy in front", fg="yellow", err=True
        )
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":  # `python -m cli.flower`, before the command is registered in the group
    flower()
