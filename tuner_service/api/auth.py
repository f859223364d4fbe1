"""Who is calling: a bearer token on every API route, a session cookie on the pages.

The JSON API takes ``Authorization: Bearer <token>``, and a browser's session cookie for
reads only: a cookie rides along on any request a browser makes, so it never authorises a
state-changing one on its own (no CSRF). The pages take the cookie and send a browser without
one to the sign-in page.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request, Security
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tuner_service import auth
from tuner_service.api.deps import RuntimeDep
from tuner_service.tenancy import Caller, LimitExceeded

SESSION_COOKIE = "tuner_session"
READS = frozenset({"GET", "HEAD"})
# Declares the scheme in OpenAPI (so /docs has "Authorize" and "Try it out" sends the token);
# the header itself is parsed below, to tell a malformed one from a missing one.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="token",
    description="An API token: `tuner token create --tenant NAME` prints one; the embedded "
    "default's is in $TUNER_HOME/token.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


class NotAuthenticated(Exception):
    """401: no usable token (the message says what was wrong)."""


def resolve_caller(request: Request, rt: RuntimeDep) -> Caller | str:
    """The caller of a request, or why there is none."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret or " " in secret:
            return "malformed Authorization header: expected 'Bearer <token>'"
        return auth.authenticate(rt.engine, secret) or "unknown or revoked token"
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        if request.method not in READS:
            return (f"a browser session does not authorise a {request.method}: send "
                    "'Authorization: Bearer <token>'")
        caller = auth.browser_caller(rt.engine, cookie)
        return caller or "the browser session has expired or was signed out: sign in again"
    return ("no token: send 'Authorization: Bearer <token>' (`tuner token create` makes one; "
            "`tuner up` keeps the local one in $TUNER_HOME/token)")


def api_caller(request: Request, rt: RuntimeDep, _: BearerCredentials) -> Caller:
    """The caller of a JSON route; 401 without a valid token."""
    caller = resolve_caller(request, rt)
    if isinstance(caller, str):
        raise NotAuthenticated(caller)
    return caller


def page_caller(request: Request, rt: RuntimeDep) -> Caller | None:
    """The caller of a page, None without one (the page then sends the browser to sign in,
    once its parameters are known to be valid: a bad one is a 422 either way). The pages
    take a bearer token too, but are documented as what they are: a browser's, by cookie."""
    caller = resolve_caller(request, rt)
    return None if isinstance(caller, str) else caller


def sign_in_first(request: Request) -> Response:
    """Send a browser to the sign-in page, which brings it back here."""
    query = request.url.query
    target = safe_next(request.url.path + (f"?{query}" if query else ""))
    return RedirectResponse(f"/signin?next={quote(target, safe='/')}", status_code=303)


ApiCaller = Annotated[Caller, Depends(api_caller)]
PageCaller = Annotated[Caller | None, Depends(page_caller)]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _on_not_authenticated(request: Request, exc: Exception) -> Response:
    # RFC 6750: a request that carried a token names the error; one without just the scheme.
    given = "authorization" in request.headers
    challenge = 'Bearer error="invalid_token"' if given else "Bearer"
    return JSONResponse(status_code=401, content={"detail": str(exc)},
                        headers={"WWW-Authenticate": challenge})


async def _on_limit(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LimitExceeded)
    return JSONResponse(status_code=429, content={"detail": str(exc)},
                        headers={"Retry-After": str(exc.retry_after_s)})


def install_auth_handlers(app: FastAPI) -> None:
    """Register the 401 and 429 answers."""
    app.add_exception_handler(NotAuthenticated, _on_not_authenticated)
    app.add_exception_handler(LimitExceeded, _on_limit)
