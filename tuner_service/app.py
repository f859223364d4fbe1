"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware

from tuner_service import __version__
from tuner_service.api.errors import BodySizeLimit, install_error_handlers
from tuner_service.api.routes import health, jobs, pages
from tuner_service.config import Settings
from tuner_service.jobs import recover_lost_work
from tuner_service.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, recover_every_s: float | None = 30.0
               ) -> FastAPI:
    """A fresh app over ``settings``; ``recover_every_s=None`` turns the lost-work loop off."""
    runtime = build_runtime(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if recover_every_s:
            task = asyncio.create_task(_recover_forever(runtime, recover_every_s))
        yield
        if task is not None:
            task.cancel()
        runtime.close()

    app = FastAPI(
        title="tuner-service",
        version=__version__,
        description="Finds the best Adam optimizer settings for Keras models.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(pages.router)
    # The report page inlines plotly.js (~4.7 MB) so it works offline; gzip makes it ~1.4 MB.
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_request_bytes)
    return app


async def _recover_forever(runtime: Runtime, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(recover_lost_work, runtime)
        except Exception:  # the loop must outlive a database hiccup
            log.exception("recovering lost work failed")
