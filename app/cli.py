"""Command line: ``python -m app migrate | create-api-key | list-api-keys | revoke-api-key | dev | check | locks``."""

from __future__ import annotations

import json
import sys

import click

from app.settings import get_settings


@click.group()
def main() -> None:
    """Operate the task application."""
    from app.logging import configure_logging

    get_settings()  # bad configuration stops here, naming the variable
    configure_logging()


@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Apply database migrations."""
    from app.migrate import upgrade

    upgrade(revision)
    click.echo(f"database at {revision}")


@main.command("create-api-key")
@click.argument("name")
@click.option("--client", "client", default=None, metavar="ID|NAME",
              help="Add the key to this existing client (key rotation). Omitted: a new client named NAME.")
def create_api_key_cmd(name: str, client: str | None) -> None:
    """Create an API key and print its secret (shown once); by default for a new client NAME."""
    from app.db import session_scope
    from app.services.auth import UnknownClient, create_api_key, find_client

    with session_scope() as session:
        if client is None and find_client(session, name) is not None:
            raise click.ClickException(f"a client named {name!r} exists; add a key to it with --client {name!r}")
        try:
            key, token = create_api_key(session, name, client)
        except UnknownClient as exc:
            raise click.ClickException(str(exc)) from None
        key_id, client_id = key.id, key.client_id
    click.echo(json.dumps({"id": key_id, "name": name, "client_id": client_id, "key": token}))


@main.command("list-api-keys")
def list_api_keys_cmd() -> None:
    """List client API keys (never their secrets)."""
    from app.db import session_scope
    from app.services.auth import list_api_keys

    with session_scope() as session:
        for key in list_api_keys(session):
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}\t{key.prefix}…\t{state}\tclient {key.client_id}\t{key.name}")


@main.command("revoke-api-key")
@click.argument("key_id", type=int)
def revoke_api_key_cmd(key_id: int) -> None:
    """Revoke a client API key."""
    from app.db import session_scope
    from app.services.auth import revoke_api_key

    with session_scope() as session:
        if not revoke_api_key(session, key_id):
            raise click.ClickException(f"API key {key_id} does not exist")
    click.echo(f"revoked {key_id}")


@main.command("create-operator")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="viewer", show_default=True,
              help="viewer: sees; operator: also acts; admin: also purges and manages operators.")
@click.option("--password", default=None, help="Omitted: a generated one, printed once.")
def create_operator_cmd(name: str, role: str, password: str | None) -> None:
    """Create an operator of the console (/console) and print its password (shown once)."""
    import secrets

    from app.db import session_scope
    from app.services.console.operators import OperatorError, create_operator

    password = password or secrets.token_urlsafe(18)
    try:
        with session_scope() as session:
            create_operator(session, name, role, password)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"name": name, "role": role, "password": password}))


@main.command()
def dev() -> None:
    """Run API, a worker on every queue, beat and Flower in the foreground."""
    from app.devserver import run_dev
    from app.migrate import upgrade

    upgrade()
    sys.exit(run_dev(get_settings()))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def check(as_json: bool) -> None:
    """Run the health checks; exit 1 when a required dependency is down."""
    from app.services.health import default_checks, run_checks

    settings = get_settings()
    healthy, results = run_checks(default_checks(settings), settings.health_timeout)
    if as_json:
        click.echo(json.dumps({"healthy": healthy, "dependencies": [r.as_dict() for r in results]}, indent=2))
    else:
        for r in results:
            flag = "" if r.required else " (optional)"
            click.echo(f"{r.name:<12} {r.status:<5} {r.latency_ms:>8.1f} ms{flag}  {r.error or ''}".rstrip())
        click.echo("healthy" if healthy else "UNHEALTHY")
    sys.exit(0 if healthy else 1)


@main.command("config-docs")
def config_docs() -> None:
    """Regenerate docs/configuration.md from the Settings class."""
    from app.configdoc import write

    click.echo(f"wrote {write()}")


@main.group()
def dlq() -> None:
    """The messages dead-letter queue."""


@dlq.command("list")
@click.option("--channel", type=click.Choice(["whatsapp", "instagram"]))
@click.option("--error", help="error kind or text")
@click.option("--all", "show_all", is_flag=True, help="include replayed ones")
@click.option("--limit", default=50, show_default=True)
def dlq_list(channel: str | None, error: str | None, show_all: bool, limit: int) -> None:
    """List dead letters, newest first."""
    from app.db import session_scope
    from app.services.messages import list_dead_letters

    with session_scope() as session:
        rows, total = list_dead_letters(
            session, channel=channel, error=error, replayed=None if show_all else False, limit=limit
        )
        for r in rows:
            replayed = f" replayed {r.replayed_at:%Y-%m-%d %H:%M:%S}" if r.replayed_at else ""
            click.echo(f"{r.id}\t{r.message_id}\t{r.channel}\t{r.error_kind}\t{r.attempts}\t{r.error[:80]}{replayed}")
    click.echo(f"{total} dead letter(s)")


@dlq.command("replay")
@click.argument("dead_letter_id", type=int)
def dlq_replay(dead_letter_id: int) -> None:
    """Send a dead letter again through the outbox."""
    from app.db import session_scope
    from app.services.messages import NotReplayable, replay_dead_letter

    try:
        with session_scope() as session:
            message_id = replay_dead_letter(session, dead_letter_id).message_id
    except (LookupError, NotReplayable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"replayed dead letter {dead_letter_id} (message {message_id})")


@main.group()
def outbox() -> None:
    """The transactional outbox."""


@outbox.command("list")
@click.option("--state", type=click.Choice(["dead", "pending", "all"]), default="dead", show_default=True)
@click.option("--limit", default=50, show_default=True)
def outbox_list(state: str, limit: int) -> None:
    """List outbox events."""
    from app.db import session_scope
    from app.services.outbox import list_events

    with session_scope() as session:
        for e in list_events(session, dead=True if state == "dead" else None, pending=state == "pending", limit=limit):
            click.echo(f"{e.id}\t{e.event_type}\t{e.task_name}\t{e.attempts}\t{'dead' if e.dead else ''}\t{e.last_error or ''}")


@outbox.command("replay")
@click.argument("event_id", type=int)
def outbox_replay(event_id: int) -> None:
    """Give a dead outbox event fresh attempts."""
    from app.db import session_scope
    from app.services.outbox import NotDead, replay_dead

    try:
        with session_scope() as session:
            if replay_dead(session, event_id) is None:
                raise click.ClickException(f"outbox event {event_id} does not exist")
    except NotDead as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"outbox event {event_id} will be published again")


@main.group()
def locks() -> None:
    """Named Redis locks (``app.locks``): see who holds what, clear a stuck one."""


@locks.command("list")
def locks_list() -> None:
    """Every held lock with its remaining TTL in seconds."""
    from app.locks import LOCK_PREFIX, redis_client

    client = redis_client()
    found = 0
    for key in client.scan_iter(match=f"{LOCK_PREFIX}*", count=500):
        found += 1
        ttl = client.pttl(key)
        name = key.decode() if isinstance(key, bytes) else key
        click.echo(f"{name.removeprefix(LOCK_PREFIX)}\t{ttl / 1000 if ttl >= 0 else 'no-ttl'}")
    click.echo(f"{found} lock(s) held")


@locks.command("clear")
@click.argument("name")
def locks_clear(name: str) -> None:
    """Delete the lock NAME (e.g. upload-gc) so the next run can take it.

    Only for a lock whose holder is gone: a lock always expires by its TTL on its own, so
    this is needed only when a TTL was set long or a run must happen now.
    """
    from app.locks import LOCK_PREFIX, redis_client

    if not redis_client().delete(LOCK_PREFIX + name):
        raise click.ClickException(f"no lock named {name!r} is held")
    click.echo(f"cleared lock {name}")
