"""Jobs, their trials, and their reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from tuner_service import jobs
from tuner_service.api.auth import ApiCaller
from tuner_service.api.deps import ReaderDep, RuntimeDep
from tuner_service.api.openapi import COMMON, NOT_FOUND, OVER_LIMIT, SIGNED_IN, WRITES, json_error
from tuner_service.api.responses import rendered_response
from tuner_service.report_schema import ReportPublic
from tuner_service.reports import DEFAULT_TOP_K, build_report
from tuner_service.runtime import Runtime
from tuner_service.schemas import (
    ErrorBody,
    JobCreate,
    JobPublic,
    JobsPublic,
    TrialsPublic,
    TrialState,
)
from tuner_service.tenancy import Caller
from tuner_service.validation import SpecRefused, as_validation_errors
from tuner_service.views import job_public, trial_public

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={**COMMON, **SIGNED_IN})
TopK = Annotated[int, Query(ge=1, le=50, description="How many top trials to compare")]


@router.post("", status_code=201, response_model=JobPublic,
             responses={**WRITES, **OVER_LIMIT, 422: {"model": ErrorBody}})
def submit_job(spec: JobCreate, rt: RuntimeDep, caller: ApiCaller) -> Response:
    """Submit a tuning job, owned by the token's tenant; its trials are queued for the
    workers."""
    try:
        job = jobs.submit_job(rt, spec, caller=caller)
    except SpecRefused as refused:
        raise RequestValidationError(as_validation_errors(refused.problems)) from None
    overview = jobs.job_overview(rt, job.id, tenant=caller.tenant)
    return Response(_job_json(rt, overview), status_code=201,
                    media_type="application/json")


# Bounded so that no offset overflows a database integer (2**63 did, as a 500).
MAX_OFFSET = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("", response_model=JobsPublic)
async def list_jobs(rt: RuntimeDep, read: ReaderDep, caller: ApiCaller, offset: Offset = 0,
                    limit: Limit = 50) -> Response:
    """List the caller's jobs (every tenant's for an admin token), newest first."""
    # Reads are async routes making one trip to a worker thread for the database: FastAPI
    # would otherwise hop threads for the route and again for validating its answer.
    page, total = await read(_overviews, rt, offset, limit, caller.scope)
    items = b",".join(_job_json(rt, overview) for overview in page)
    body = b'{"items":[%s],"total":%d}' % (items, total)
    return Response(body, media_type="application/json")


def _overviews(rt: Runtime, offset: int, limit: int, tenant: str | None
               ) -> tuple[list[jobs.JobOverview], int]:
    return jobs.job_overviews(rt, offset, limit, tenant=tenant)


def _overview(rt: Runtime, job_id: str, tenant: str | None) -> jobs.JobOverview:
    return jobs.job_overview(rt, job_id, tenant=tenant)


def _job_json(rt: Runtime, overview: jobs.JobOverview) -> bytes:
    """A job's JSON as in ``JobPublic``, rendered again only when what it shows changed
    (most listed jobs have ended and never change)."""
    shown = overview.shown
    cached = rt.job_json.get(overview.job.id)
    if cached is not None and cached[0] == shown:
        return cached[1]
    body = job_public(overview).model_dump_json().encode("utf-8")
    rt.job_json.put(overview.job.id, (shown, body))
    return body


def jobs_public(rt: Runtime, offset: int, limit: int, caller: Caller) -> JobsPublic:
    """A page of the caller's jobs, newest first, with their progress (the HTML page)."""
    page, total = jobs.job_overviews(rt, offset, limit, tenant=caller.scope)
    return JobsPublic(items=[job_public(overview) for overview in page], total=total)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: str, rt: RuntimeDep, read: ReaderDep, caller: ApiCaller
                  ) -> Response:
    """A job's status, trial counts and best trial so far."""
    overview = await read(_overview, rt, job_id, caller.scope)
    return Response(_job_json(rt, overview), media_type="application/json")


@router.get("/{job_id}/trials", response_model=TrialsPublic, responses=NOT_FOUND)
def list_trials(
    job_id: str,
    rt: RuntimeDep,
    caller: ApiCaller,
    state: TrialState | None = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> TrialsPublic:
    """A job's trials by number, optionally only those in one state."""
    _, records, _ = jobs.get_job(rt, job_id, tenant=caller.scope)
    chosen = [r for r in records if state is None or r.state == state]
    return TrialsPublic(
        items=[trial_public(r) for r in chosen[offset: offset + limit]], total=len(chosen)
    )


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses={**NOT_FOUND, **WRITES, 409: json_error("The job has already ended")})
def cancel_job(job_id: str, rt: RuntimeDep, caller: ApiCaller) -> Response:
    """Stop a job: no new trials start; running ones are pruned at their next epoch."""
    jobs.cancel_job(rt, job_id, tenant=caller.scope)
    overview = jobs.job_overview(rt, job_id, tenant=caller.scope)
    return Response(_job_json(rt, overview), media_type="application/json")


@router.get("/{job_id}/report", response_model=ReportPublic, responses=NOT_FOUND)
def get_report(
    job_id: str,
    rt: RuntimeDep,
    request: Request,
    caller: ApiCaller,
    top_k: TopK = DEFAULT_TOP_K,
) -> Response:
    """The best-config report: the winner against the paper defaults, and how far to trust it."""
    overview = jobs.job_overview(rt, job_id, tenant=caller.scope, fingerprint=True)

    def render() -> bytes:
        d = jobs.job_detail(rt, job_id, tenant=caller.scope)
        report = build_report(d.job, d.records, d.runs, warm=d.warm, top_k=top_k)
        return report.model_dump_json().encode("utf-8")

    rendered = rt.reports.get_or_render(("json", job_id, top_k), overview.fingerprint, render)
    return rendered_response(request, rendered, "application/json")
