"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from tuner_service import __version__
from tuner_service.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(rt: RuntimeDep) -> JSONResponse:
    """Is the API up and its database reachable."""
    try:
        with rt.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # report, do not crash: this is what health checks are for
        return JSONResponse(status_code=503, content={"status": "unavailable",
                                                      "database": str(error)[:200]})
    return JSONResponse({"status": "ok", "version": __version__})
