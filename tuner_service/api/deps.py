"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tuner_service.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The runtime built by ``create_app`` (async: FastAPI would run a plain function in a
    worker thread, a hop that cost more than the lookup)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
