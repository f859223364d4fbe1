"""Every error answers JSON naming what was wrong: ``{"detail": ...}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuner_service.db.repository import NotFound
from tuner_service.jobs import JobConflict
from tuner_service.studies import STORAGE_ERRORS

log = logging.getLogger(__name__)


def field_name(loc: Sequence[Any]) -> str:
    """``("body", "search_space", "beta_1", "range", "high")`` -> ``search_space.beta_1.high``."""
    parts = [p for p in loc if p not in ("body", "range", "fixed")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _validation_body(errors: Sequence[Any]) -> dict[str, Any]:
    return {
        "detail": [
            {"field": field_name(e.get("loc", ())),
             "message": str(e.get("msg", "")).removeprefix("Value error, "),
             "type": e.get("type", "value_error")}
            for e in errors
        ]
    }


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content=_validation_body(exc.errors()))


async def _on_not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": f"job {exc} not found"})


async def _on_conflict(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def _on_database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error: %s", exc)
    return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                        content={"detail": "the database is unavailable; try again shortly"})


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error answers."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    database_errors: tuple[type[Exception], ...] = (OperationalError, *STORAGE_ERRORS)
    for database_error in database_errors:
        app.add_exception_handler(database_error, _on_database_down)
    app.add_exception_handler(NotFound, _on_not_found)
    app.add_exception_handler(JobConflict, _on_conflict)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            status_code=413,
            content={"detail": f"request body larger than {self.max_bytes} bytes"},
        )
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
