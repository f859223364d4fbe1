"""How jobs and reports look in the terminal (Rich tables and lines)."""

from __future__ import annotations

from pydantic import BaseModel
from rich.table import Column, Table

from tuner_service.cli.common import console
from tuner_service.datasets.catalog import data_line
from tuner_service.model_sources.catalog import model_line
from tuner_service.report_schema import ConfirmedConfig, ReportPublic
from tuner_service.schemas import AdamParams, JobPublic, JobsPublic, TrialCounts
from tuner_service.search_space import ParamRange


def print_json(answer: BaseModel) -> None:
    """An API answer as indented JSON, as the server sent it."""
    console.print_json(answer.model_dump_json())


def print_jobs(page: JobsPublic) -> None:
    """A page of jobs as a table, and how many there are in all."""
    # An admin token lists several tenants' jobs: then say whose each one is.
    tenants = len({job.tenant for job in page.items}) > 1
    table = Table("name", *(["tenant"] if tenants else []), "status", "trials", "best",
                  "created")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))
    for job in page.items:
        best = job.best.value if job.best else None
        table.add_row(job.id, job.name, *([job.tenant] if tenants else []), job.status,
                      f"{job.trials_ended}/{job.n_trials}",
                      f"{best:.4g}" if best is not None else "-",
                      job.created_at.isoformat(timespec="seconds")[:19])
    console.print(table)
    console.print(f"{page.total} job(s)")


def print_job(job: JobPublic) -> None:
    """A job's status, trial counts, best trial and error."""
    confirm = job.confirmation
    confirming = (f", {confirm.runs_ended}/{confirm.runs} confirmation runs ended"
                  if confirm else "")
    console.print(f"[bold]{job.name}[/bold] {job.id}: {job.status}, "
                  f"{job.trials_ended}/{job.n_trials} trials ended{confirming}")
    console.print("  " + _counts(job.trial_counts))
    if job.best:
        console.print(f"  best: trial {job.best.trial_number} = {job.best.value:.6g}")
    if job.error:
        console.print(f"  [red]{job.error}[/red]")


def phase(job: JobPublic) -> str:
    """The status, and while the search's winners are re-trained, how far that is."""
    confirm = job.confirmation
    if job.status == "running" and confirm:
        return f"confirming {confirm.runs_ended}/{confirm.runs}"
    return job.status


def print_report(report: ReportPublic) -> None:
    """The report in the terminal: best against the paper defaults, trust, and the snippet."""
    console.print(_config_table(report))
    if report.dataset is not None:
        console.print("tuned on " + data_line(report.dataset), highlight=False, markup=False)
    if report.model is not None:
        console.print("model: " + model_line(report.model), highlight=False, markup=False)
    console.print("trials: " + _counts(report.trial_counts))
    compute = report.compute
    console.print(f"compute: {compute.trial_epochs} trial-epochs "
                  f"({compute.confirm_epochs} confirming), "
                  f"{compute.worker_seconds:.1f} worker-seconds")
    if report.warm_start:
        console.print("learned from: " + ", ".join(
            f"{w.job_id} ({w.trials} trials)" for w in report.warm_start))
    if report.confirmation.statement:
        console.print(report.confirmation.statement, highlight=False, markup=False)
    _print_findings(report)
    if report.keras_snippet:
        # soft_wrap: a narrow terminal must not break the code's lines.
        console.print("\n" + report.keras_snippet, highlight=False, markup=False,
                      soft_wrap=True)


def _config_table(report: ReportPublic) -> Table:
    """Each Adam number and the metric: recommended, search-time best, paper defaults."""
    metric = report.objective.metric
    title = f"Best Adam configuration ({metric}, {report.objective.direction})"
    if report.partial:
        title += " — partial, the job is still running"
    rec, best, base = report.recommended, report.best, report.baseline
    columns = ["recommended (confirmed)", "search-time best"] if rec else ["best"]
    table = Table("", *columns, "paper defaults", "searched over", title=title)
    for param in report.parameters:
        key = param.name
        confirmed = [_num(_adam(rec.params, key))] if rec else []
        table.add_row(key, *confirmed, _num(_adam(best.params, key)) if best else "-",
                      _num(_adam(base.params, key)) if base else "-", _searched(param.searched))
    defaults = next((c for c in report.confirmed if c.is_baseline), None)
    confirmed_values = [_mean_sd(rec)] if rec else []
    table.add_row(metric, *confirmed_values, _num(best.value) if best else "-",
                  _mean_sd(defaults) if rec and defaults else
                  _num(base.value) if base and base.value is not None else "-", "")
    return table


def _print_findings(report: ReportPublic) -> None:
    """The gain over the defaults, when the best was found, and how far to trust it."""
    if report.improvement:
        gain = report.improvement
        relative = f" ({gain.relative:.1%})" if gain.relative is not None else ""
        basis = ("confirmed means" if report.improvement_basis == "confirmed_means"
                 else "search-time values")
        console.print(f"improvement over the paper defaults ({basis}): "
                      f"{gain.absolute:.4g}{relative}")
    if report.best_found:
        found = report.best_found
        console.print(f"best found after {found.after_trials} trials "
                      f"({found.after_trial_epochs} trial-epochs)")
    if report.spread:
        console.print(f"trust: {report.spread.verdict} — {report.spread.explanation}")
    if report.message:
        console.print(report.message)


def _counts(counts: TrialCounts) -> str:
    return ", ".join(f"{state} {n}" for state, n in counts.model_dump().items())


def _adam(params: AdamParams, name: str) -> float:
    value: float = getattr(params, name)
    return value


def _mean_sd(confirmed: ConfirmedConfig) -> str:
    if confirmed.mean is None:
        return "-"
    sd = f" ± {_num(confirmed.sd)}" if confirmed.sd is not None else ""
    return f"{_num(confirmed.mean)}{sd} (n={len(confirmed.values)})"


def _searched(space: ParamRange | None) -> str:
    if space is None:
        return "fixed"
    text = f"{_num(space.low)} … {_num(space.high)}{' log' if space.log else ''}"
    return f"0 or {text}" if space.include_zero else text


def _num(value: float) -> str:
    return f"{value:.6g}"
