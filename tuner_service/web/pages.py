"""Render the HTML pages from the API's own models (Jinja2, autoescaped)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import datetime

import jinja2

from tuner_service import __version__
from tuner_service.report_schema import ParamSummary, ReportPublic
from tuner_service.schemas import TERMINAL_JOB_STATUSES, JobPublic
from tuner_service.tenancy import Caller
from tuner_service.web.assets import page_scripts
from tuner_service.web.plots import Plot

# While something runs the pages reload themselves: no JavaScript framework, no websocket.
REFRESH_S = 10


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tuner_service.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=number, pct=percent, duration=duration, when=when, searched=searched)
    env.globals.update(improvement_word=improvement_word, version=__version__)
    return env


def render_signin(*, target: str, problem: str | None = None) -> str:
    """The sign-in form (a token, posted once, for a session cookie)."""
    return _environment().get_template("signin.html").render(
        target=target, problem=problem, scripts=[], csp_nonce=None, refresh_s=None)


def render_report(report: ReportPublic, job: JobPublic, plots: Sequence[Plot], *,
                  standalone: bool = False, csp_nonce: str | None = None) -> str:
    """The report page; ``standalone`` carries its scripts inline (a file that works offline),
    allowed by ``csp_nonce`` when a server sends it under a Content-Security-Policy."""
    return _environment().get_template("report.html").render(
        report=report, job=job, plots=plots, plots_drawn=any(p.figure_json for p in plots),
        scripts=page_scripts(with_plotly=True, standalone=standalone), csp_nonce=csp_nonce,
        refresh_s=REFRESH_S if report.partial and not standalone else None,
    )


def render_jobs(jobs: Sequence[JobPublic], total: int, offset: int, limit: int, caller: Caller
                ) -> str:
    """The caller's jobs list: status, progress and best value, each linking to its report
    (and, for an admin, each job's tenant)."""
    running = any(job.status not in TERMINAL_JOB_STATUSES for job in jobs)
    return _environment().get_template("jobs.html").render(
        jobs=jobs, total=total, offset=offset, limit=limit, caller=caller, csp_nonce=None,
        scripts=page_scripts(with_plotly=False, standalone=False),
        refresh_s=REFRESH_S if running else None,
    )


def number(value: float | None) -> str:
    """Five significant digits: enough to tell beta_2 0.9995 from 0.9999."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.5g}"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


def searched(param: ParamSummary) -> str:
    """Where a number was searched, in words."""
    space = param.searched
    if space is None:
        return "fixed"
    text = f"{number(space.low)} … {number(space.high)}"
    if space.log:
        scale = "1 − beta on a log scale" if param.name.startswith("beta") else "log scale"
        text += f" ({scale})"
    return f"0 (off) or {text}" if space.include_zero else text


def improvement_word(better: bool, minimize: bool) -> str:
    """'lower'/'higher' said so that the reader knows which way is good."""
    if minimize:
        return "lower (better)" if better else "higher (worse)"
    return "higher (better)" if better else "lower (worse)"
