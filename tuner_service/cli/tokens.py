"""``tuner token``: API tokens, made on the server side (this talks to the database, not to
the API, so no token can make tokens); and ``tuner open``, which signs a browser in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from tuner_service.cli.common import TokenOption, UrlOption, console, errors, fail
from tuner_service.config import Settings

if TYPE_CHECKING:  # the database is imported only by the commands that use it
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="API tokens: create one per team, list them, revoke them. Run where "
                  "the database is reachable (TUNER_DATABASE_URL).", no_args_is_help=True)


def _sessions(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    from tuner_service.db.migrate import upgrade
    from tuner_service.db.session import make_engine, make_session_factory

    upgrade(settings)  # a fresh embedded database has no tables yet
    engine = make_engine(settings)
    return engine, make_session_factory(engine)


@app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The team whose jobs the token submits and "
                                             "sees (a-z, 0-9, '_', '.', '-')")],
    label: Annotated[str, typer.Option(help="What the token is for (shown by list)")] = "",
    admin: Annotated[bool, typer.Option(help="See every tenant's jobs")] = False,
) -> None:
    """Make a token; it is printed once, on the last line, alone."""
    from tuner_service.auth import TokenRefused, create_token

    engine, sessions = _sessions(Settings())
    try:
        token, secret = create_token(sessions, tenant=tenant, label=label, admin=admin)
    except TokenRefused as refused:
        raise fail(f"--tenant/--label: {refused}", 2) from None
    finally:
        engine.dispose()
    kind = "admin token (sees every tenant)" if admin else "token"
    errors.print(f"{kind} {token.id} for tenant {token.tenant!r}; it is shown once, below: "
                 "the database keeps only its digest", highlight=False, soft_wrap=True)
    typer.echo(secret)


@app.command("list")
def list_tokens() -> None:
    """Every token: id, tenant, label, admin, created, last used, revoked (never a secret)."""
    from tuner_service.auth import list_tokens as all_tokens

    engine, sessions = _sessions(Settings())
    try:
        tokens = all_tokens(sessions)
    finally:
        engine.dispose()
    table = Table(Column("id", no_wrap=True, min_width=32), "tenant", "label", "admin",
                  "created", "last used", "revoked")
    for token in tokens:
        table.add_row(token.id, token.tenant, token.label, "yes" if token.is_admin else "",
                      _when(token.created_at), _when(token.last_used_at),
                      _when(token.revoked_at))
    console.print(table)
    console.print(f"{len(tokens)} token(s)")


@app.command()
def revoke(token_id: Annotated[str, typer.Argument(help="The id `tuner token list` shows")]
           ) -> None:
    """Revoke a token: 401 from then on, and its browser sessions end."""
    from tuner_service.auth import revoke_token

    engine, sessions = _sessions(Settings())
    try:
        revoked = revoke_token(sessions, token_id)
    finally:
        engine.dispose()
    if not revoked:
        raise fail(f"no live token {token_id[:40]!r} (see `tuner token list`)")
    console.print(f"revoked {token_id}")


def open_pages(url: UrlOption = None, token: TokenOption = None) -> None:
    """Open the jobs page in a browser, signed in with the CLI's token (a one-time link)."""
    from tuner_service.cli.jobs import open_in_browser, signed_in_url

    open_in_browser(signed_in_url(url, "/", token))


def _when(moment: object) -> str:
    from datetime import datetime

    return moment.isoformat(timespec="seconds")[:19] if isinstance(moment, datetime) else "-"
