"""The ``tuner`` command: run the service, and submit and watch jobs over HTTP."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from tuner_service.client import ApiError, TunerClient
from tuner_service.config import LOOPBACK_HOSTS, Settings
from tuner_service.schemas import TERMINAL_JOB_STATUSES

app = typer.Typer(help="Find the best Adam settings for Keras models.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[
    str | None, typer.Option("--url", help="API server (default: $TUNER_URL or localhost:8000)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer")]


def _client(url: str | None) -> TunerClient:
    return TunerClient(url or Settings().url)


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _call(url: str | None, method: str, *args: Any) -> Any:
    """Call the API; turn refusals and unreachable servers into messages and exit codes."""
    import httpx

    try:
        with _client(url) as client:
            return getattr(client, method)(*args)
    except ApiError as error:
        raise _fail(str(error), 2 if error.status_code == 422 else 1) from None
    except httpx.TransportError as error:
        raise _fail(f"cannot reach the API at {url or Settings().url}: {error}") from None


@app.command()
def migrate() -> None:
    """Create or upgrade the database (our tables and Optuna's)."""
    from tuner_service.db.migrate import upgrade

    settings = Settings()
    upgrade(settings)
    console.print(f"database ready: {_safe_url(settings.resolved_database_url)}")


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the HTTP API server."""
    import uvicorn

    from tuner_service.app import create_app

    settings = Settings()
    _print_host_hint(host, settings)
    uvicorn.run(create_app(settings), host=host, port=port)


def host_hint(host: str, allowed_hosts: list[str]) -> str | None:
    """A warning when the API listens beyond loopback but answers only loopback Host names."""
    if _is_loopback(host) or not set(allowed_hosts) <= set(LOOPBACK_HOSTS):
        return None
    return (f"listening on {host}, but requests are refused unless their Host is one of "
            f"{', '.join(allowed_hosts)}: set TUNER_ALLOWED_HOSTS to the names clients use "
            "(comma-separated, '*' for any)")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _print_host_hint(host: str, settings: Settings) -> None:
    hint = host_hint(host, settings.allowed_hosts)
    if hint:
        errors.print(f"[yellow]note:[/yellow] {hint}", highlight=False, soft_wrap=True)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes (use 1 per GPU)")] = 1,
    gpu: Annotated[str | None, typer.Option(help="Pin to this GPU index")] = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker that trains trials (TensorFlow loads in its pool children)."""
    from tuner_service.embedded import worker_command, worker_env

    command = worker_command(Settings(), concurrency=concurrency, loglevel=loglevel)
    os.execvpe(command[0], command, worker_env(gpu))


@app.command()
def up(
    port: int = 8000,
    host: str = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    gpus: Annotated[str | None, typer.Option(help="Comma-separated GPU indices")] = None,
) -> None:
    """Run everything on this machine: migrate, N workers and the API (Ctrl-C stops all)."""
    import uvicorn

    from tuner_service.app import create_app
    from tuner_service.db.migrate import upgrade
    from tuner_service.embedded import (
        open_worker_log,
        start_workers,
        stop_workers,
        worker_log_path,
    )

    settings = Settings()
    upgrade(settings)
    log_path = worker_log_path(settings)
    with open_worker_log(log_path) as log:
        processes = start_workers(settings, workers, gpus.split(",") if gpus else None,
                                  output=log)
    console.print(f"tuner-service on http://{host}:{port} with {workers} worker(s); "
                  f"data in {settings.home.resolve()}", soft_wrap=True, highlight=False)
    console.print(f"worker logs: {log_path}", soft_wrap=True, highlight=False)
    _print_host_hint(host, settings)
    # uvicorn shuts down on SIGTERM, then re-raises it; with the default handler that kills
    # this process before ``finally`` stops the workers (docker stop, systemd, kill).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        # "warning": the API's own warnings and errors stay on the terminal, access lines don't.
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        stop_workers(processes)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON)")],
    wait: Annotated[bool, typer.Option(help="Wait for the job and print its report")] = False,
    url: UrlOption = None,
) -> None:
    """Submit a tuning job."""
    job = _call(url, "submit", _read_spec(spec_file))
    console.print(f"submitted job [bold]{job['id']}[/bold] ({job['name']}), "
                  f"{job['n_trials']} trials")
    if wait:
        final = wait_for(url, job["id"])
        print_report(_call(url, "report", job["id"]))
        if final["status"] != "succeeded":
            raise _fail(f"job {final['status']}: {final.get('error') or ''}".strip())


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise _fail(f"cannot read {path}: {error.strerror}", 2) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise _fail(f"{path} is not valid YAML/JSON: {error}", 2) from None
    if not isinstance(data, dict):
        raise _fail(f"{path} must hold a mapping (the job spec), not {type(data).__name__}", 2)
    return data


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats the YAML 1.2 way.

    PyYAML follows YAML 1.1, where a float needs a dot: ``1e-5`` is the *string* "1e-5", which
    the strict API refuses where a number goes. Spec files are written as YAML 1.2 (and as
    JSON, whose numbers are YAML 1.2 floats), so read ``1e-5``, ``1E+3``, ``.5``, ``-.5``.
    """


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


def wait_for(url: str | None, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    """Show a progress bar until the job ends; returns the final job."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[best]}"))
    with _client(url) as client, Progress(*columns, console=console) as progress:
        job = _job_patiently(client, job_id)
        bar = progress.add_task("trials", total=job["n_trials"], best="")
        while True:
            best = job.get("best")
            progress.update(bar, completed=job["trials_ended"], description=_phase(job),
                            best=f"best {best['value']:.4g}" if best else "")
            if job["status"] in TERMINAL_JOB_STATUSES:
                return job
            time.sleep(poll_s)
            job = _job_patiently(client, job_id)


def _phase(job: dict[str, Any]) -> str:
    """The status, and while the search's winners are re-trained, how far that is."""
    confirm = job.get("confirmation")
    if job["status"] == "running" and confirm:
        return f"confirming {confirm['runs_ended']}/{confirm['runs']}"
    return str(job["status"])


def _job_patiently(client: TunerClient, job_id: str, patience_s: float = 300.0
                   ) -> dict[str, Any]:
    """The job, riding out a restarting server or database (503, refused connections)."""
    import httpx

    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.job(job_id)
        except ApiError as error:
            if error.status_code != 503 or time.monotonic() > deadline:
                raise _fail(str(error)) from None
        except httpx.TransportError as error:
            if time.monotonic() > deadline:
                raise _fail(f"lost the API for {patience_s:.0f} s: {error}") from None
        time.sleep(2.0)


@app.command()
def jobs(url: UrlOption = None, limit: int = 20) -> None:
    """List jobs, newest first."""
    page = _call(url, "jobs", 0, limit)
    table = Table("name", "status", "trials", "best", "created")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))
    for job in page["items"]:
        best = job["best"]["value"] if job["best"] else None
        table.add_row(job["id"], job["name"], job["status"],
                      f"{job['trials_ended']}/{job['n_trials']}",
                      f"{best:.4g}" if best is not None else "-", job["created_at"][:19])
    console.print(table)
    console.print(f"{page['total']} job(s)")


@app.command()
def status(job_id: str, url: UrlOption = None,
           as_json: JsonOption = False) -> None:
    """Show a job's status, trial counts and best trial."""
    job = _call(url, "job", job_id)
    if as_json:
        console.print_json(json.dumps(job))
        return
    confirm = job.get("confirmation")
    confirming = (f", {confirm['runs_ended']}/{confirm['runs']} confirmation runs ended"
                  if confirm else "")
    console.print(f"[bold]{job['name']}[/bold] {job['id']}: {job['status']}, "
                  f"{job['trials_ended']}/{job['n_trials']} trials ended{confirming}")
    console.print("  " + ", ".join(f"{k} {v}" for k, v in job["trial_counts"].items()))
    if job["best"]:
        console.print(f"  best: trial {job['best']['trial_number']} = {job['best']['value']:.6g}")
    if job["error"]:
        console.print(f"  [red]{job['error']}[/red]")


@app.command()
def cancel(job_id: str, url: UrlOption = None) -> None:
    """Cancel a job: no new trials; running ones are pruned."""
    job = _call(url, "cancel", job_id)
    console.print(f"job {job['id']}: {job['status']}")


@app.command()
def report(
    job_id: str,
    url: UrlOption = None,
    as_json: JsonOption = False,
    html: Annotated[Path | None, typer.Option(
        help="Write the report page (one self-contained HTML file) here", dir_okay=False,
    )] = None,
    open_it: Annotated[bool, typer.Option(
        "--open", help="Open the report in a browser (the --html file, else the live page)",
    )] = False,
) -> None:
    """Print a job's best-config report, or write / open its HTML page."""
    if html is not None:
        page = _call(url, "report_html", job_id)
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as error:
            raise _fail(f"--html: cannot write {html}: {error.strerror}", 2) from None
        console.print(f"wrote {html} ({len(page) / 1e6:.1f} MB, works offline)")
    if open_it:
        _open_in_browser(html.resolve().as_uri() if html else _report_url(url, job_id))
    if html is None and not open_it:
        body = _call(url, "report", job_id)
        if as_json:
            console.print_json(json.dumps(body))
        else:
            print_report(body)


def _report_url(url: str | None, job_id: str) -> str:
    _call(url, "job", job_id)  # an unknown job fails here, with the API's message
    with _client(url) as client:
        return client.report_url(job_id)


def _open_in_browser(target: str) -> None:
    import webbrowser

    if not webbrowser.open(target):
        raise _fail(f"no browser found; open {target} yourself")
    console.print(f"opened {target}")


def print_report(report: dict[str, Any]) -> None:
    """The report in the terminal: best against the paper defaults, trust, and the snippet."""
    metric = report["objective"]["metric"]
    title = f"Best Adam configuration ({metric}, {report['objective']['direction']})"
    if report["partial"]:
        title += " — partial, the job is still running"
    rec = report["recommended"]
    columns = ["recommended (confirmed)", "search-time best"] if rec else ["best"]
    table = Table("", *columns, "paper defaults", "searched over", title=title)
    best, base = report["best"], report["baseline"]
    for param in report["parameters"]:
        key = param["name"]
        confirmed = [_num(rec["params"][key])] if rec else []
        table.add_row(key, *confirmed, _num(best["params"][key]) if best else "-",
                      _num(base["params"][key]) if base else "-", _searched(param["searched"]))
    defaults = next((c for c in report["confirmed"] if c["is_baseline"]), None)
    confirmed_values = [_mean_sd(rec)] if rec else []
    table.add_row(metric, *confirmed_values, _num(best["value"]) if best else "-",
                  _mean_sd(defaults) if rec and defaults else
                  _num(base["value"]) if base and base["value"] is not None else "-", "")
    console.print(table)
    counts, compute = report["trial_counts"], report["compute"]
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    console.print(f"compute: {compute['trial_epochs']} trial-epochs "
                  f"({compute['confirm_epochs']} confirming), "
                  f"{compute['worker_seconds']:.1f} worker-seconds")
    if report["warm_start"]:
        console.print("learned from: " + ", ".join(
            f"{w['job_id']} ({w['trials']} trials)" for w in report["warm_start"]))
    if report["confirmation"]["statement"]:
        console.print(report["confirmation"]["statement"], highlight=False, markup=False)
    if report["improvement"]:
        gain = report["improvement"]
        relative = f" ({gain['relative']:.1%})" if gain["relative"] is not None else ""
        basis = ("confirmed means" if report["improvement_basis"] == "confirmed_means"
                 else "search-time values")
        console.print(f"improvement over the paper defaults ({basis}): "
                      f"{gain['absolute']:.4g}{relative}")
    if report["best_found"]:
        found = report["best_found"]
        console.print(f"best found after {found['after_trials']} trials "
                      f"({found['after_trial_epochs']} trial-epochs)")
    if report["spread"]:
        console.print(f"trust: {report['spread']['verdict']} — {report['spread']['explanation']}")
    if report["message"]:
        console.print(report["message"])
    if report["keras_snippet"]:
        # soft_wrap: a narrow terminal must not break the code's lines.
        console.print("\n" + report["keras_snippet"], highlight=False, markup=False,
                      soft_wrap=True)


def _mean_sd(confirmed: dict[str, Any]) -> str:
    if confirmed["mean"] is None:
        return "-"
    sd = f" ± {_num(confirmed['sd'])}" if confirmed["sd"] is not None else ""
    return f"{_num(confirmed['mean'])}{sd} (n={len(confirmed['values'])})"


def _searched(space: dict[str, Any] | None) -> str:
    if space is None:
        return "fixed"
    text = f"{_num(space['low'])} … {_num(space['high'])}{' log' if space['log'] else ''}"
    return f"0 or {text}" if space["include_zero"] else text


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    port: Annotated[int | None, typer.Option(help="Port of the temporary server "
                                                  "(default: a free one)")] = None,
    trials: Annotated[int | None, typer.Option(help="Override n_trials")] = None,
) -> None:
    """Start the embedded service, tune the built-in digits example, print its report, stop."""
    import subprocess

    spec = _read_spec(EXAMPLE_SPEC)
    if trials is not None:
        spec["budget"]["n_trials"] = trials
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port",
                               str(port), "--workers", str(workers)])
    try:
        _wait_healthy(url, server)
        job = _call(url, "submit", spec)
        console.print(f"demo job {job['id']}: {job['n_trials']} trials of "
                      f"{spec['name']} ({spec['budget']['epochs']} epochs each)")
        final = wait_for(url, job["id"])
        print_report(_call(url, "report", job["id"]))
        page = Settings().home / "demo-report.html"
        page.write_text(_call(url, "report_html", job["id"]), encoding="utf-8")
        console.print("\nThe report page, plots and all (open it in a browser):")
        console.print(str(page), soft_wrap=True, highlight=False)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait()
    if final["status"] != "succeeded":
        from tuner_service.embedded import worker_log_path

        reason = f": {final['error']}" if final.get("error") else ""
        raise _fail(f"demo job {final['status']}{reason} "
                    f"(worker logs: {worker_log_path(Settings())})")


EXAMPLE_SPEC = Path(__file__).parent / "examples" / "digits-logreg.yaml"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with _client(url) as client:
        while not client.healthy():
            if server.poll() is not None:
                raise _fail("the embedded service did not start (see the messages above)")
            if time.monotonic() > deadline:
                raise _fail(f"the embedded service did not answer within {timeout_s:.0f} s")
            time.sleep(0.3)


def _num(value: float) -> str:
    return f"{value:.6g}"


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
