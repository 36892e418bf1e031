"""Command line: ``python -m app migrate | create-api-key | list-api-keys | revoke-api-key | dev | check``."""

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
def create_api_key_cmd(name: str) -> None:
    """Create a client API key and print its secret (shown once)."""
    from app.db import session_scope
    from app.services.auth import create_api_key

    with session_scope() as session:
        key, token = create_api_key(session, name)
        key_id = key.id
    click.echo(json.dumps({"id": key_id, "name": name, "key": token}))


@main.command("list-api-keys")
def list_api_keys_cmd() -> None:
    """List client API keys (never their secrets)."""
    from app.db import session_scope
    from app.services.auth import list_api_keys

    with session_scope() as session:
        for key in list_api_keys(session):
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}\t{key.prefix}…\t{state}\t{key.name}")


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
