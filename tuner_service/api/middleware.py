"""The outermost middleware: a request id, a JSON 500, and the browser security headers.

Starlette's own ``ServerErrorMiddleware`` answers an unhandled error in plain text and then
re-raises it, and uvicorn closes the keep-alive connection of any request whose app raised, so
the client's *next* request fails too. ``RequestGuard`` is added last (outermost of our
middleware) and never re-raises: the error is logged with the request id and answered as JSON.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Sent with every response: no MIME sniffing (a JSON error echoing input is never run as HTML),
# no framing (clickjacking), and no Referer leaking job ids to other sites.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def content_security_policy(nonce: str) -> str:
    """The CSP of our HTML pages; only scripts we wrote (and tagged with ``nonce``) run."""
    return "; ".join([
        "default-src 'none'",
        # 'unsafe-eval': plotly.js's full bundle draws parcoords (and other WebGL traces) with
        # regl, which compiles its draw calls with new Function (plotly.js issue #897); ReDoc's
        # schema validator (ajv) does the same. A nonce still keeps injected <script> out.
        f"script-src 'self' 'nonce-{nonce}' 'unsafe-eval'",
        # Plotly, Swagger UI and ReDoc set style attributes and insert <style> rules at run
        # time (plotly.js issue #2355); a nonce here would disable 'unsafe-inline'.
        "style-src 'self' 'unsafe-inline'",
        # blob:: plotly's "download plot as png" draws its SVG through a blob URL.
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        # ReDoc indexes its search in a Web Worker created from a blob URL.
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


async def send_json(scope: Scope, send: Send, status: int, body: dict[str, Any]) -> None:
    """Answer ``body`` as JSON without reading the request (for middleware that refuses)."""
    await JSONResponse(body, status_code=status)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class RequestGuard:
    """Request id, security headers and CSP nonce on every response; a JSON 500 on any error.

    The id and the nonce are put in the scope's state, so routes read them as
    ``request.state.request_id`` and ``request.state.csp_nonce``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        nonce = secrets.token_urlsafe(16)
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, csp_nonce=nonce)
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                _add_headers(message, request_id, nonce)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error in %s %s (request_id=%s)",
                          scope.get("method"), scope.get("path"), request_id)
            if started:  # part of an answer is out: uvicorn ends the connection, as it must
                return
            await send_json(scope, send_with_headers, 500,
                            {"detail": "internal server error", "request_id": request_id})


def _add_headers(message: Message, request_id: str, nonce: str) -> None:
    headers = MutableHeaders(scope=message)
    headers[REQUEST_ID_HEADER] = request_id
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    if headers.get("content-type", "").startswith("text/html"):
        headers.setdefault("Content-Security-Policy", content_security_policy(nonce))
