"""Tokens and browser sign-in: create, list and revoke tokens; turn a secret into a Caller.

A token is a long random secret shown once; the database keeps its SHA-256 digest (a secret of
256 random bits needs no slow, salted hash). Looking a digest up by its unique index leaks
nothing an attacker could use: timing tells at best how much of the digest of their own guess
matched, which says nothing about any real secret; the final comparison is constant-time too.
Browser sessions and one-time sign-in links are secrets of the same kind, tied to the token
that made them: revoking the token ends them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tuner_service.config import Settings
from tuner_service.db import token_store as store
from tuner_service.db.models import LOCAL_TENANT, utcnow
from tuner_service.db.session import make_session_factory, session_scope
from tuner_service.db.token_store import COOKIE, LINK, LiveToken, TokenInfo
from tuner_service.tenancy import Caller, tenant_name_problem

TOKEN_PREFIX = "tnr_"
SIGNIN_LINK_S = 60
MAX_SECRET_CHARS = 200


class TokenRefused(ValueError):
    """A token cannot be created as asked (the message says why)."""


def digest_of(secret: str) -> str:
    """The SHA-256 hex digest a secret is stored and looked up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_secret(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def _caller(token: LiveToken) -> Caller:
    return Caller(tenant=token.tenant, is_admin=token.is_admin, token_id=token.id)


def create_token(sessions: sessionmaker[Session], *, tenant: str, label: str = "",
                 admin: bool = False) -> tuple[TokenInfo, str]:
    """A new token of ``tenant`` and its secret (which is not kept)."""
    problem = tenant_name_problem(tenant)
    if problem:
        raise TokenRefused(problem)
    if len(label) > 200:
        raise TokenRefused("a label is at most 200 characters")
    secret = _new_secret()
    with session_scope(sessions) as session:
        token = store.add_token(session, token_id=uuid.uuid4().hex, digest=digest_of(secret),
                                tenant=tenant, label=label, is_admin=admin, now=utcnow())
    return token, secret


def list_tokens(sessions: sessionmaker[Session]) -> list[TokenInfo]:
    """Every token, oldest first, without secrets."""
    with session_scope(sessions) as session:
        return store.all_tokens(session)


def revoke_token(sessions: sessionmaker[Session], token_id: str) -> bool:
    """Revoke a token (and sign its browsers out); False when no live token has that id."""
    with session_scope(sessions) as session:
        return store.revoke_token(session, token_id, utcnow())


def authenticate(engine: Engine, secret: str) -> Caller | None:
    """The caller a bearer token acts for; None for an unknown or revoked token."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        return None
    with engine.connect() as connection:
        token = store.live_token(connection, digest_of(secret))
    if token is None:
        return None
    now = utcnow()
    if _due_for_touch(token, now):
        with engine.begin() as connection:
            store.touch_token(connection, token.id, now)
    return _caller(token)


_touched: dict[str, datetime] = {}  # token id -> when this process last wrote last_used_at
_touched_lock = threading.Lock()


def _due_for_touch(token: LiveToken, now: datetime) -> bool:
    """Whether this request should write the token's last use: when the stored time is a
    minute old, and no other request of this process has claimed that write meanwhile
    (requests at once would otherwise all queue for SQLite's one writer)."""
    stale = now - store.TOUCH_EVERY
    if token.last_used_at is not None and token.last_used_at >= stale:
        return False
    with _touched_lock:
        if _touched.get(token.id, stale) > stale:
            return False
        _touched[token.id] = now
        return True


def create_signin_link(sessions: sessionmaker[Session], caller: Caller) -> str:
    """A one-time code that signs a browser in as ``caller``'s token, for a minute."""
    return _browser_secret(sessions, caller, LINK, SIGNIN_LINK_S)


def redeem_signin_link(sessions: sessionmaker[Session], code: str, lifetime_s: int
                       ) -> str | None:
    """Use up a sign-in link: a new browser session's secret, or None when the link is
    unknown, expired or used."""
    if not code or len(code) > MAX_SECRET_CHARS:
        return None
    with session_scope(sessions) as session:
        token = store.take_link(session, digest_of(code), utcnow())
    if token is None:
        return None
    return start_browser_session(sessions, _caller(token), lifetime_s)


def start_browser_session(sessions: sessionmaker[Session], caller: Caller, lifetime_s: int
                          ) -> str:
    """A new cookie session for ``caller``'s token; returns its secret (the cookie)."""
    return _browser_secret(sessions, caller, COOKIE, lifetime_s)


def _browser_secret(sessions: sessionmaker[Session], caller: Caller, kind: str,
                    lifetime_s: int) -> str:
    """A new secret of ``kind`` (a link or a cookie) on behalf of ``caller``'s token."""
    if caller.token_id is None:
        raise ValueError("only a token's caller can sign a browser in")
    secret, now = _new_secret(f"{kind}_"), utcnow()
    with session_scope(sessions) as session:
        store.add_browser_session(session, digest=digest_of(secret), token_id=caller.token_id,
                                  kind=kind, now=now,
                                  expires_at=now + timedelta(seconds=lifetime_s))
    return secret


def browser_caller(engine: Engine, cookie: str) -> Caller | None:
    """The caller a session cookie acts for; None when it is unknown, expired or its token
    was revoked."""
    if not cookie or len(cookie) > MAX_SECRET_CHARS:
        return None
    with engine.connect() as connection:
        token = store.session_token(connection, digest_of(cookie), COOKIE, utcnow())
    return _caller(token) if token is not None else None


def end_browser_session(sessions: sessionmaker[Session], cookie: str) -> None:
    """Sign a browser out."""
    with session_scope(sessions) as session:
        store.end_browser_session(session, digest_of(cookie))


def ensure_local_token(engine: Engine, settings: Settings) -> tuple[str, bool]:
    """The embedded default's admin token of the tenant ``local``, kept in
    ``settings.token_file`` (mode 0600): the one there if it still works, else a new one
    (first start, a fresh database, a revoked token). Returns the secret and whether it is
    new."""
    kept = settings.saved_token
    if kept and authenticate(engine, kept) is not None:
        return kept, False
    _, secret = create_token(make_session_factory(engine), tenant=LOCAL_TENANT,
                             label="tuner up (local admin)", admin=True)
    write_secret(settings.token_file, secret)
    return secret, True


def write_secret(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only, atomically (never a half-written file, and
    never a moment with looser permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.replace(staging, path)
