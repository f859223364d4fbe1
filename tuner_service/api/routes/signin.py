"""Browser sign-in: a token (typed, or a one-time link from the CLI) for a session cookie.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it)
and Secure when the request came over HTTPS; the pages accept it, the JSON API only for reads.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from tuner_service import auth
from tuner_service.api.auth import SESSION_COOKIE, ApiCaller, safe_next
from tuner_service.api.deps import RuntimeDep
from tuner_service.api.openapi import COMMON, SIGNED_IN, WRITES
from tuner_service.runtime import Runtime
from tuner_service.schemas import Me, SigninLink
from tuner_service.web.pages import render_signin

router = APIRouter(tags=["sign-in"], responses=COMMON)
Next = Annotated[str, Query(max_length=2000, description="Where to go once signed in")]
MAX_FORM_BYTES = 4096


@router.get("/signin", response_class=HTMLResponse, include_in_schema=False)
def signin_page(next: Next = "/") -> HTMLResponse:
    """The sign-in form."""
    return HTMLResponse(render_signin(target=safe_next(next)))


@router.post("/signin", include_in_schema=False)
async def sign_in(request: Request, rt: RuntimeDep) -> Response:
    """Check the posted token; on success a session cookie and back to where the user was."""
    body = await request.body()
    form = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))
    token, target = form.get("token", [""])[0].strip(), safe_next(form.get("next", ["/"])[0])
    # Async only to read the body; the database work runs in a thread, as in every route.
    secret = await run_in_threadpool(_session_for_token, rt, token)
    if secret is None:
        return HTMLResponse(render_signin(target=target, problem="Unknown or revoked token."),
                            status_code=401)
    return _signed_in(request, rt.settings.browser_session_s, secret, target)


def _session_for_token(rt: Runtime, token: str) -> str | None:
    """A new browser session's secret for a valid token, else None."""
    caller = auth.authenticate(rt.engine, token) if token else None
    if caller is None:
        return None
    return auth.start_browser_session(rt.sessions, caller, rt.settings.browser_session_s)


@router.get("/signin/link", include_in_schema=False)
def sign_in_by_link(request: Request, rt: RuntimeDep, code: str = "", next: Next = "/"
                    ) -> Response:
    """Use up a one-time link from ``tuner open`` / ``tuner report --open``."""
    lifetime = rt.settings.browser_session_s
    secret = auth.redeem_signin_link(rt.sessions, code, lifetime)
    if secret is None:
        problem = ("This sign-in link has expired or was used already: run `tuner open` "
                   "again, or paste a token.")
        return HTMLResponse(render_signin(target=safe_next(next), problem=problem),
                            status_code=401)
    return _signed_in(request, lifetime, secret, safe_next(next))


@router.post("/signout", include_in_schema=False)
def sign_out(request: Request, rt: RuntimeDep) -> Response:
    """End the browser's session and forget its cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        auth.end_browser_session(rt.sessions, cookie)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.post("/v1/auth/signin-links", response_model=SigninLink, status_code=201,
             responses={**SIGNED_IN, **WRITES})
def create_signin_link(request: Request, rt: RuntimeDep, caller: ApiCaller, next: Next = "/"
                       ) -> SigninLink:
    """A one-time link (valid for a minute) that signs a browser in as this token."""
    code = auth.create_signin_link(rt.sessions, caller)
    url = request.url_for("sign_in_by_link").include_query_params(
        code=code, next=safe_next(next))
    return SigninLink(url=str(url), expires_in_s=auth.SIGNIN_LINK_S)


@router.get("/v1/me", response_model=Me, responses=SIGNED_IN)
def me(caller: ApiCaller) -> Me:
    """The tenant the caller's token acts for, and whether it is an admin token."""
    return Me(tenant=caller.tenant, is_admin=caller.is_admin, token_id=caller.token_id)


def _signed_in(request: Request, lifetime_s: int, secret: str, target: str) -> Response:
    response = RedirectResponse(target, status_code=303)
    https = (request.url.scheme == "https"
             or request.headers.get("x-forwarded-proto", "").lower() == "https")
    response.set_cookie(SESSION_COOKIE, secret, max_age=lifetime_s, path="/", httponly=True,
                        samesite="strict", secure=https)
    return response
