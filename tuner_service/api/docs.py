"""``/docs`` (Swagger UI) and ``/redoc`` served with their assets from our own origin.

FastAPI's default pages load their JavaScript from a CDN: they break offline, and a CDN is one
more party whose code runs next to the API. fastapi-offline ships the same assets; we serve them
under ``/static/docs`` and tag Swagger UI's inline start-up script with the request's CSP nonce.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/static/docs"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

router = APIRouter(include_in_schema=False)


def install_docs(app: FastAPI) -> None:
    """Serve the API docs pages and their assets (build the app with docs_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    app.include_router(router)


def _assets(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: try the API from the browser."""
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{_assets(request)}/swagger-ui-bundle.js",
        swagger_css_url=f"{_assets(request)}/swagger-ui.css",
        swagger_favicon_url=f"{_assets(request)}/favicon.png",
        # No badge that sends our schema to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    return HTMLResponse(with_nonce(bytes(page.body).decode(), request.state.csp_nonce))


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the API reference as one page."""
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{_assets(request)}/redoc.standalone.js",
        redoc_favicon_url=f"{_assets(request)}/favicon.png",
        with_google_fonts=False,
    )


def with_nonce(page: str, nonce: str) -> str:
    """Let the page's inline scripts run under our CSP (scripts with ``src`` need no nonce)."""
    return page.replace("<script>", f'<script nonce="{nonce}">')
