"""HTML pages: the jobs list at ``/`` and each job's report page."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from tuner_service import jobs
from tuner_service.api.deps import RuntimeDep
from tuner_service.api.routes.jobs import NOT_FOUND, Limit, Offset, TopK, jobs_public
from tuner_service.reports import DEFAULT_TOP_K, build_report
from tuner_service.schemas import JobCreate
from tuner_service.views import job_public
from tuner_service.web.pages import render_jobs, render_report
from tuner_service.web.plots import report_plots

router = APIRouter(tags=["pages"])


@router.get("/", response_class=HTMLResponse)
def jobs_page(rt: RuntimeDep, offset: Offset = 0, limit: Limit = 50) -> HTMLResponse:
    """Every job with its status and progress, each linking to its report."""
    page = jobs_public(rt, offset, limit)
    return HTMLResponse(render_jobs(page.items, page.total, offset, limit))


@router.get("/v1/jobs/{job_id}/report.html", response_class=HTMLResponse, responses=NOT_FOUND)
def report_page(job_id: str, rt: RuntimeDep, top_k: TopK = DEFAULT_TOP_K) -> HTMLResponse:
    """The best-config report as one self-contained page (plots work offline)."""
    job, records, slots = jobs.get_job(rt, job_id)
    report = build_report(job, records, top_k=top_k)
    plots = report_plots(report, records, JobCreate.model_validate(job.spec))
    return HTMLResponse(render_report(report, job_public(job, records, slots), plots))
