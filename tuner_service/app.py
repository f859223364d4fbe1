"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware

from tuner_service import __version__
from tuner_service.api.auth import install_auth_handlers
from tuner_service.api.bodies import BodyLimit
from tuner_service.api.crosssite import CrossSiteGuard
from tuner_service.api.docs import install_docs
from tuner_service.api.errors import install_error_handlers
from tuner_service.api.middleware import RequestGuard
from tuner_service.api.routes import datasets, health, jobs, models, pages, signin
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
        stopping = asyncio.Event()
        task = None
        if recover_every_s:
            task = asyncio.create_task(_recover_forever(runtime, recover_every_s, stopping))
        yield
        # Not task.cancel(): a pass in flight runs in a thread that a cancel does not stop, and
        # closing the pools under it would leave it a fresh connection that nobody closes.
        stopping.set()
        if task is not None:
            await task
        runtime.close()

    app = FastAPI(
        title="tuner-service",
        version=__version__,
        description="Finds the best Adam optimizer settings for Keras models.",
        lifespan=lifespan,
        # Served by install_docs from our own origin instead of a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    install_auth_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(pages.router)
    app.include_router(signin.router)
    install_docs(app)
    _add_middleware(app, runtime.settings)
    return app


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # Added innermost first. The cheap refusals (host, origin, content type) come before the
    # body is read; RequestGuard is outermost so its headers and JSON 500 cover them all.
    # Answers the routes did not compress already (reports and assets are gzipped once).
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(CrossSiteGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestGuard)


async def _recover_forever(runtime: Runtime, every_s: float, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=every_s)
            return
        try:
            await asyncio.to_thread(recover_lost_work, runtime)
        except Exception:  # the loop must outlive a database hiccup
            log.exception("recovering lost work failed")
