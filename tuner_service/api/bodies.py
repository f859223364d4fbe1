"""Request bodies: a bad Content-Length is 400 and a body over the cap is 413, chunked or not.

The body is read here, up to the cap, and replayed to the app. Raising from inside ``receive``
instead (as the first version did) reaches FastAPI's body parsing, which reports any error
there as a 400 "error parsing the body", so a chunked body over the cap never got its 413.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuner_service.api.middleware import send_json

_DIGITS = re.compile(r"[0-9]+")
# Beyond this many digits the length is over any sane cap; int() of thousands of digits fails.
_MAX_DIGITS = 18


class BadLength(Exception):
    """A Content-Length that is not one plain non-negative integer."""


class _ClientGone(Exception):
    pass


def declared_length(headers: Headers) -> int | None:
    """The Content-Length, None when absent; raises ``BadLength`` unless one plain integer."""
    values = {value.strip() for value in headers.getlist("content-length")}
    if not values:
        return None
    if len(values) > 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise BadLength
    value = values.pop()
    return int(value) if len(value) <= _MAX_DIGITS else 10**_MAX_DIGITS


# Uploads stream to disk under their own cap (``api/uploads.py``): never buffered here.
STREAMED_PATHS = frozenset({"/v1/datasets", "/v1/models"})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before they reach the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in STREAMED_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            declared = declared_length(Headers(scope=scope))
        except BadLength:
            detail = "Content-Length must be one non-negative integer"
            await send_json(scope, send, 400, {"detail": detail})
            return
        try:
            body = None if (declared or 0) > self.max_bytes else await self._read(receive)
        except _ClientGone:  # nobody to answer, and half a body must not reach the app
            return
        if body is None:
            await send_json(scope, send, 413, {
                "detail": f"request body larger than {self.max_bytes} bytes "
                          "(TUNER_MAX_REQUEST_BYTES)"})
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it is over the cap (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` in one message, then defers to the server's."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:  # e.g. a streaming response listening for the client's disconnect
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
