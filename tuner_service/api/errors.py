"""Every error answers JSON naming what was wrong: ``{"detail": ...}``."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuner_service.datasets.service import DatasetInUse
from tuner_service.db.repository import NotFound
from tuner_service.jobs import JobConflict
from tuner_service.model_sources.files import ModelInUse
from tuner_service.studies import STORAGE_ERRORS

log = logging.getLogger(__name__)


# Union members' tags that pydantic puts in an error's location after the field: the user
# wrote dataset.validation_split, not dataset.builtin.validation_split.
_UNION_TAGS = {"dataset": ("builtin", "upload"),
               "model": ("architecture", "uploaded_file", "plugin_model")}


def field_name(loc: Sequence[Any]) -> str:
    """``("body", "search_space", "beta_1", "range", "high")`` -> ``search_space.beta_1.high``;
    ``("body", "dataset", "upload", "id")`` -> ``dataset.id``."""
    kept = [p for p in loc if p not in ("body", "range", "fixed")]
    parts = [p for i, p in enumerate(kept)
             if not (i and p in _UNION_TAGS.get(str(kept[i - 1]), ()))]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _validation_body(errors: Sequence[Any], body: Any = None) -> dict[str, Any]:
    return {
        "detail": [
            _syntax_error(e, body) if e.get("type") == "json_invalid" else
            {"field": field_name(e.get("loc", ())),
             "message": str(e.get("msg", "")).removeprefix("Value error, "),
             "type": e.get("type", "value_error")}
            for e in errors
        ]
    }


def _syntax_error(error: dict[str, Any], body: Any) -> dict[str, Any]:
    """FastAPI reports a JSON syntax error at ``("body", <offset>)``: it is the body's, and
    the offset is where the parser stopped, which we give as line and column."""
    loc = error.get("loc", ())
    offset = loc[-1] if loc and isinstance(loc[-1], int) else None
    where = ""
    if offset is not None and isinstance(body, str):
        line = body.count("\n", 0, offset) + 1
        column = offset - body.rfind("\n", 0, offset)
        where = f" at line {line}, column {column} (character {offset})"
    elif offset is not None:
        where = f" at character {offset}"
    reason = str((error.get("ctx") or {}).get("error", "")) or "syntax error"
    return {"field": "body", "message": f"invalid JSON{where}: {reason}",
            "type": "json_invalid"}


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content=_validation_body(exc.errors(), exc.body))


async def _on_not_found(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFound)
    key = exc.key
    shown = key if len(key) <= 64 else f"{key[:64]}…"  # ids are 32 characters
    return JSONResponse(status_code=404, content={"detail": f"{exc.kind} {shown} not found"})


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 and FastAPI's 400s as JSON; a 405 lists every method the path
    takes (Starlette names only those of the first route that matched it)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = _methods_of(request.app, request.url.path)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
    return await http_exception_handler(request, exc)


def _methods_of(app: FastAPI, path: str) -> set[str]:
    """Every method the API takes on ``path``, read from its own OpenAPI paths."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "methods", None)
    if table is None:
        table = [(re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"),
                  {method.upper() for method in operations})
                 for template, operations in app.openapi()["paths"].items()]
        app.state.methods = table
    methods = {m for pattern, found in table if pattern.match(path) for m in found}
    return methods | {"HEAD"} if "GET" in methods else methods


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
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(JobConflict, _on_conflict)
    app.add_exception_handler(DatasetInUse, _on_conflict)
    app.add_exception_handler(ModelInUse, _on_conflict)
