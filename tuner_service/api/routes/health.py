"""Liveness (``/healthz``) and readiness (``/readyz``) probes."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from tuner_service import __version__
from tuner_service.api.auth import api_caller
from tuner_service.api.deps import RuntimeDep
from tuner_service.api.openapi import SIGNED_IN
from tuner_service.runtime import Runtime

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
Check = Literal["ok", "unreachable"]


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["ok"]
    version: str


class Readiness(BaseModel):
    """Whether a job submitted now would be stored and reach the workers; one word each."""

    status: Literal["ready", "unavailable"]
    database: Check
    broker: Check


@router.get("/healthz", response_model=Liveness)
def healthz() -> Liveness:
    """Liveness: the API process answers. Touches nothing else, so it stays cheap."""
    return Liveness(status="ok", version=__version__)


@router.get("/readyz", response_model=Readiness, dependencies=[Depends(api_caller)],
            responses={**SIGNED_IN, 503: {"model": Readiness, "description": "Not ready"}})
def readyz(rt: RuntimeDep) -> JSONResponse:
    """Readiness: the database and the broker answer (503 naming which does not). Needs a
    token like every route but /healthz (a probe sends it as a header)."""
    ready = Readiness(
        status="ready",
        database="ok" if _database_ready(rt) else "unreachable",
        broker="ok" if rt.queue.broker_ready() else "unreachable",
    )
    if "unreachable" in (ready.database, ready.broker):
        ready = ready.model_copy(update={"status": "unavailable"})
        return JSONResponse(status_code=503, content=ready.model_dump(),
                            headers={"Retry-After": "5"})
    return JSONResponse(ready.model_dump())


def _database_ready(rt: Runtime) -> bool:
    try:
        with rt.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # the driver's text names hosts and ports: log it, never answer it
        log.warning("database not reachable", exc_info=True)
        return False
    return True
