"""HTML pages: the jobs list at ``/``, each job's report page, and the pages' scripts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from tuner_service import jobs
from tuner_service.api.auth import PageCaller, api_caller, sign_in_first
from tuner_service.api.deps import RuntimeDep
from tuner_service.api.openapi import COMMON, NOT_FOUND
from tuner_service.api.responses import rendered_response
from tuner_service.api.routes.jobs import Limit, Offset, TopK, jobs_public
from tuner_service.reports import DEFAULT_TOP_K, build_report
from tuner_service.runtime import Runtime
from tuner_service.views import job_public
from tuner_service.web.assets import find_asset
from tuner_service.web.pages import render_jobs, render_report
from tuner_service.web.plots import report_plots

router = APIRouter(tags=["pages"], responses=COMMON)
# Asset names carry their version or content hash: a browser may keep them for good.
IMMUTABLE = "public, max-age=31536000, immutable"
Standalone = Annotated[bool, Query(
    description="Carry the scripts inline: one file that works offline (tuner report --html)")]


SIGN_IN: dict[int | str, dict[str, Any]] = {
    303: {"description": "Not signed in: to the sign-in page, which comes back here"}}


@router.get("/", response_class=HTMLResponse, responses=SIGN_IN)
def jobs_page(rt: RuntimeDep, request: Request, caller: PageCaller, offset: Offset = 0,
              limit: Limit = 50) -> Response:
    """The caller's jobs (every tenant's for an admin) with their status and progress, each
    linking to its report."""
    if caller is None:
        return sign_in_first(request)
    page = jobs_public(rt, offset, limit, caller)
    return HTMLResponse(render_jobs(page.items, page.total, offset, limit, caller))


@router.get("/v1/jobs/{job_id}/report.html", response_class=HTMLResponse,
            responses={**NOT_FOUND, **SIGN_IN})
def report_page(job_id: str, rt: RuntimeDep, request: Request, caller: PageCaller,
                top_k: TopK = DEFAULT_TOP_K, standalone: Standalone = False) -> Response:
    """The best-config report as a page; rebuilt only when the job has changed."""
    if caller is None:
        return sign_in_first(request)
    overview = jobs.job_overview(rt, job_id, tenant=caller.scope, fingerprint=True)
    if standalone:
        nonce = getattr(request.state, "csp_nonce", None)
        return HTMLResponse(_report_html(rt, overview, top_k, standalone=True, nonce=nonce))
    rendered = rt.reports.get_or_render(
        ("html", job_id, top_k), overview.fingerprint,
        lambda: _report_html(rt, overview, top_k).encode("utf-8"))
    return rendered_response(request, rendered, "text/html; charset=utf-8")


def _report_html(rt: Runtime, overview: jobs.JobOverview, top_k: int, *,
                 standalone: bool = False, nonce: str | None = None) -> str:
    d = jobs.job_detail(rt, overview.job.id, tenant=overview.job.tenant)
    report = build_report(d.job, d.records, d.runs, warm=d.warm, top_k=top_k)
    plots = report_plots(report, d.records, overview.spec)
    return render_report(report, job_public(overview), plots, standalone=standalone,
                         csp_nonce=nonce)


@router.get("/assets/{name}", include_in_schema=False, dependencies=[Depends(api_caller)])
def asset(name: str, request: Request) -> Response:
    """plotly.js and the pages' script."""
    found = find_asset(name)
    if found is None:
        return JSONResponse(status_code=404, content={"detail": f"no asset {name!r}"})
    return rendered_response(request, found.rendered, found.media_type, IMMUTABLE)
