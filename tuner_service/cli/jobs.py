"""Commands on jobs over HTTP: submit, list, status, cancel, report; and reading spec files."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuner_service.cli.common import (
    JsonOption,
    TokenOption,
    UrlOption,
    call,
    client_for,
    console,
    fail,
)
from tuner_service.cli.rendering import phase, print_job, print_jobs, print_json, print_report
from tuner_service.client import ApiError, TunerClient
from tuner_service.schemas import TERMINAL_JOB_STATUSES, JobPublic


def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON)")],
    wait: Annotated[bool, typer.Option(help="Wait for the job and print its report")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Submit a tuning job."""
    spec = read_spec(spec_file)
    job = call(url, lambda client: client.submit(spec), token)
    console.print(f"submitted job [bold]{job.id}[/bold] ({job.name}), {job.n_trials} trials")
    if wait:
        final = wait_for(url, job.id, token=token)
        print_report(call(url, lambda client: client.report(job.id), token))
        if final.status != "succeeded":
            raise fail(f"job {final.status}: {final.error or ''}".strip())


def jobs(url: UrlOption = None, limit: int = 20, token: TokenOption = None) -> None:
    """List jobs, newest first."""
    print_jobs(call(url, lambda client: client.jobs(0, limit), token))


def status(job_id: str, url: UrlOption = None, as_json: JsonOption = False,
           token: TokenOption = None) -> None:
    """Show a job's status, trial counts and best trial."""
    job = call(url, lambda client: client.job(job_id), token)
    if as_json:
        print_json(job)
    else:
        print_job(job)


def cancel(job_id: str, url: UrlOption = None, token: TokenOption = None) -> None:
    """Cancel a job: no new trials; running ones are pruned."""
    job = call(url, lambda client: client.cancel(job_id), token)
    console.print(f"job {job.id}: {job.status}")


def report(
    job_id: str,
    url: UrlOption = None,
    as_json: JsonOption = False,
    html: Annotated[Path | None, typer.Option(
        help="Write the report page (one self-contained HTML file) here", dir_okay=False,
    )] = None,
    open_it: Annotated[bool, typer.Option(
        "--open", help="Open the report in a browser (the --html file, else the live page, "
        "signed in)",
    )] = False,
    token: TokenOption = None,
) -> None:
    """Print a job's best-config report, or write / open its HTML page."""
    if html is not None:
        _save_report_page(url, job_id, html, token)
    if open_it:
        open_in_browser(html.resolve().as_uri() if html
                         else _report_link(url, job_id, token))
    if html is None and not open_it:
        body = call(url, lambda client: client.report(job_id), token)
        if as_json:
            print_json(body)
        else:
            print_report(body)


def _save_report_page(url: str | None, job_id: str, path: Path, token: str | None) -> None:
    page = call(url, lambda client: client.report_html(job_id), token)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise fail(f"--html: cannot write {path}: {error.strerror}", 2) from None
    console.print(f"wrote {path} ({len(page) / 1e6:.1f} MB, works offline)")


def _report_link(url: str | None, job_id: str, token: str | None) -> str:
    """A signed-in link to a job's live report page (an unknown job fails here first, with
    the API's message)."""
    call(url, lambda client: client.job(job_id), token)
    return signed_in_url(url, f"/v1/jobs/{job_id}/report.html", token)


def signed_in_url(url: str | None, path: str, token: str | None) -> str:
    """A one-time link that signs a browser in with the CLI's token and shows ``path``."""
    return call(url, lambda client: client.signin_link(path), token).url


def open_in_browser(target: str) -> None:
    """Open ``target`` in the user's browser, or say where to open it."""
    import webbrowser

    if not webbrowser.open(target):
        raise fail(f"no browser found; open {target} yourself (a sign-in link works once, "
                   "within a minute)")
    # A sign-in link's code stays off the terminal once the browser has it.
    console.print(f"opened {target.partition('?code=')[0]}")


def wait_for(url: str | None, job_id: str, poll_s: float = 1.0, *, token: str | None = None
             ) -> JobPublic:
    """Show a progress bar until the job ends; returns the final job."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[best]}"))
    with client_for(url, token) as client, Progress(*columns, console=console) as progress:
        job = _job_patiently(client, job_id)
        bar = progress.add_task("trials", total=job.n_trials, best="")
        while True:
            progress.update(bar, completed=job.trials_ended, description=phase(job),
                            best=f"best {job.best.value:.4g}" if job.best else "")
            if job.status in TERMINAL_JOB_STATUSES:
                return job
            time.sleep(poll_s)
            job = _job_patiently(client, job_id)


def _job_patiently(client: TunerClient, job_id: str, patience_s: float = 300.0) -> JobPublic:
    """The job, riding out a restarting server or database (503, refused connections) and
    rate limits (429)."""
    import httpx

    deadline = time.monotonic() + patience_s
    while True:
        pause_s = 2.0
        try:
            return client.job(job_id)
        except ApiError as error:
            if error.status_code not in (429, 503) or time.monotonic() > deadline:
                raise fail(str(error)) from None
            pause_s = error.retry_after if error.retry_after is not None else pause_s
        except httpx.TransportError as error:
            if time.monotonic() > deadline:
                raise fail(f"lost the API for {patience_s:.0f} s: {error}") from None
        time.sleep(pause_s)


def read_spec(path: Path) -> dict[str, Any]:
    """A job spec file as a mapping; exits 2 when it cannot be read or is no mapping."""
    try:
        text = path.read_text()
    except OSError as error:
        raise fail(f"cannot read {path}: {error.strerror}", 2) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise fail(f"{path} is not valid YAML/JSON: {error}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"{path} must hold a mapping (the job spec), not {type(data).__name__}", 2)
    return data


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats and booleans the YAML 1.2 way.

    PyYAML follows YAML 1.1, where a float needs a dot: ``1e-5`` is the *string* "1e-5", which
    the strict API refuses where a number goes. Spec files are written as YAML 1.2 (and as
    JSON, whose numbers are YAML 1.2 floats), so read ``1e-5``, ``1E+3``, ``.5``, ``-.5``. And
    in YAML 1.1 ``off``, ``on``, ``yes`` and ``no`` are booleans, so ``warm_start: off`` would
    be refused as ``false``; in 1.2 only true and false are, and ``off`` stays the word.
    """


BOOL = "tag:yaml.org,2002:bool"
# New lists, not edited ones: the subclass's table starts as a shallow copy of SafeLoader's.
Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


# YAML 1.2 core schema float (without .inf/.nan, which 1.1's resolver already reads). Added
# after 1.1's int and float resolvers, so it only changes what they left a string; the float
# constructor already parses these forms.
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse a job spec file (YAML 1.2 floats; JSON is YAML too)."""
    return yaml.load(text, Loader=Yaml12Loader)
