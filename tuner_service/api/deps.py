"""Dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request

from tuner_service.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The runtime built by ``create_app`` (async: FastAPI would run a plain function in a
    worker thread, a hop that cost more than the lookup)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# Threads that may run reads at once. The work is CPU-bound Python under one GIL: more threads
# only take turns more often, and once requests queue, every answer slows down together.
READ_THREADS = 4
T = TypeVar("T")
Reader = Callable[..., Awaitable[Any]]


async def get_reader(request: Request) -> Reader:
    """Runs a blocking read in a worker thread, at most ``READ_THREADS`` at a time."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "read_limiter", None)
    if limiter is None:  # one per app, made on its own event loop
        limiter = request.app.state.read_limiter = anyio.CapacityLimiter(READ_THREADS)

    async def read(function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=limiter)

    return read


ReaderDep = Annotated[Reader, Depends(get_reader)]
