"""Persistence of API tokens and browser sessions; callers own the transaction.

Only digests are stored: a token's or a session's secret is never written anywhere.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Row, bindparam, delete, or_, select, update
from sqlalchemy.orm import Session

from tuner_service.db.models import BrowserSessionModel, TokenModel, aware

# last_used_at is written at most this often per token: a write per request would queue
# every reader behind SQLite's single writer.
TOUCH_EVERY = timedelta(seconds=60)
LINK, COOKIE = "link", "cookie"


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``tuner token list`` shows it: everything but the secret."""

    id: str
    tenant: str
    label: str
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _info(row: TokenModel) -> TokenInfo:
    created = aware(row.created_at)
    assert created is not None
    return TokenInfo(row.id, row.tenant, row.label, row.is_admin, created,
                     aware(row.last_used_at), aware(row.revoked_at))


def add_token(session: Session, *, token_id: str, digest: str, tenant: str, label: str,
              is_admin: bool, now: datetime) -> TokenInfo:
    """Store a new token by its digest."""
    row = TokenModel(id=token_id, digest=digest, tenant=tenant, label=label,
                     is_admin=is_admin, created_at=now)
    session.add(row)
    session.flush()
    return _info(row)


def all_tokens(session: Session) -> list[TokenInfo]:
    """Every token, oldest first (revoked ones too: the list is an audit trail)."""
    rows = session.scalars(select(TokenModel).order_by(TokenModel.created_at, TokenModel.id))
    return [_info(row) for row in rows]


@dataclass(frozen=True)
class LiveToken:
    """What a request needs of its unrevoked token."""

    id: str
    tenant: str
    is_admin: bool
    last_used_at: datetime | None


# Read on every request: Core statements built once, run on a bare connection (the ORM's
# session and row objects cost five times the query itself).
_TOKEN_COLUMNS = (TokenModel.id, TokenModel.digest, TokenModel.tenant, TokenModel.is_admin,
                  TokenModel.last_used_at)
_LIVE_TOKEN = select(*_TOKEN_COLUMNS).where(
    TokenModel.digest == bindparam("digest"), TokenModel.revoked_at.is_(None))
_SESSION_TOKEN = select(*_TOKEN_COLUMNS).join(BrowserSessionModel).where(
    BrowserSessionModel.digest == bindparam("digest"),
    BrowserSessionModel.kind == bindparam("kind"),
    BrowserSessionModel.expires_at > bindparam("now"), TokenModel.revoked_at.is_(None))


TokenRow = Row[str, str, str, bool, datetime | None]


def _live(row: TokenRow | None, digest: str | None = None) -> LiveToken | None:
    if row is None or (digest is not None and not hmac.compare_digest(row.digest, digest)):
        return None
    return LiveToken(row.id, row.tenant, row.is_admin, aware(row.last_used_at))


def live_token(connection: Connection, digest: str) -> LiveToken | None:
    """The unrevoked token with this digest."""
    return _live(connection.execute(_LIVE_TOKEN, {"digest": digest}).first(), digest)


def touch_token(connection: Connection, token_id: str, now: datetime) -> None:
    """Note that the token was used (unless that was noted less than a minute ago)."""
    connection.execute(
        update(TokenModel)
        .where(TokenModel.id == token_id,
               or_(TokenModel.last_used_at.is_(None), TokenModel.last_used_at < now - TOUCH_EVERY))
        .values(last_used_at=now))


def revoke_token(session: Session, token_id: str, now: datetime) -> bool:
    """Revoke a token and end its browser sessions; False when there is no such live token."""
    revoked = session.execute(
        update(TokenModel).where(TokenModel.id == token_id, TokenModel.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False))
    session.execute(delete(BrowserSessionModel).where(BrowserSessionModel.token_id == token_id))
    return bool(revoked.rowcount)  # type: ignore[attr-defined]


def add_browser_session(session: Session, *, digest: str, token_id: str, kind: str,
                        now: datetime, expires_at: datetime) -> None:
    """Store a sign-in link or a cookie session by its digest (expired ones are purged)."""
    session.execute(delete(BrowserSessionModel).where(BrowserSessionModel.expires_at < now))
    session.add(BrowserSessionModel(digest=digest, token_id=token_id, kind=kind,
                                    created_at=now, expires_at=expires_at))


def session_token(connection: Connection, digest: str, kind: str, now: datetime
                  ) -> LiveToken | None:
    """The live token behind an unexpired browser session or link of this digest."""
    row = connection.execute(_SESSION_TOKEN, {"digest": digest, "kind": kind, "now": now})
    return _live(row.first())


def take_link(session: Session, digest: str, now: datetime) -> LiveToken | None:
    """Use up a one-time sign-in link: its token, or None when it is unknown, expired or
    taken already (a conditional delete: of two clicks at once, one wins)."""
    token = session_token(session.connection(), digest, LINK, now)
    if token is None:
        return None
    taken = session.execute(delete(BrowserSessionModel).where(
        BrowserSessionModel.digest == digest, BrowserSessionModel.kind == LINK))
    return token if taken.rowcount == 1 else None  # type: ignore[attr-defined]


def end_browser_session(session: Session, digest: str) -> None:
    """Forget a cookie session (sign-out)."""
    session.execute(delete(BrowserSessionModel).where(BrowserSessionModel.digest == digest,
                                                      BrowserSessionModel.kind == COOKIE))
