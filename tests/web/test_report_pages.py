"""The report of a real finished job: its JSON agrees with the trials table, and its HTML page
renders every plot in a real Chromium with no JavaScript errors.

One job per backend trains through a real worker process; the page is served by a real HTTP
server. Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright (no browser download).
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import (
    REQUIRE_SERVERS,
    WorkerStack,
    bearer,
    http_server,
    new_token,
    settings_env,
)
from tuner_service.cli import EXAMPLE_SPEC
from tuner_service.schemas import JobCreate

CHROMIUM = Path("/usr/bin/chromium")
PLOTS = ("history", "curves", "importances", "contour", "slice", "parallel")


@pytest.fixture(scope="module")
def finished_job(stack: WorkerStack) -> dict[str, Any]:
    """A small digits job, all five numbers searched (decay may be on), run to the end."""
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    spec.update(name="report-e2e", budget={"n_trials": 8, "epochs": 4, "batch_size": 64})
    job = stack.wait(stack.submit(spec))
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def server_url(stack: WorkerStack) -> Iterator[str]:
    with http_server(stack.settings) as url:
        yield url


def test_the_json_report_agrees_with_the_trials_table(
    stack: WorkerStack, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["id"]
    report = stack.client.get(f"/v1/jobs/{job_id}/report", params={"top_k": 3}).json()
    trials = stack.client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    complete = sorted((t for t in trials if t["state"] == "complete"),
                      key=lambda t: (t["value"], t["number"]))
    assert report["partial"] is False and report["message"] is None

    for state in ("complete", "pruned", "fail", "running", "waiting"):
        assert report["trial_counts"][state] == sum(t["state"] == state for t in trials)
    best, baseline = complete[0], next(t for t in trials if t["is_baseline"])
    assert report["best"] == {"trial_number": best["number"], "value": best["value"],
                              "params": best["params"], "hyperparameters": {}}
    assert [p["best"] for p in report["parameters"]] == list(best["params"].values())
    assert report["baseline"]["value"] == baseline["value"]
    assert report["baseline"]["intermediate_values"] == baseline["intermediate_values"]
    gain = baseline["value"] - best["value"]
    assert math.isclose(report["improvement"]["absolute"], gain, rel_tol=1e-12)
    assert math.isclose(report["improvement"]["percent"], 100 * gain / baseline["value"],
                        rel_tol=1e-12)

    assert report["compute"]["trial_epochs"] == sum(len(t["intermediate_values"])
                                                    for t in trials)
    # A trial trained in a pack of K counts a K-th of its time.
    assert math.isclose(report["compute"]["worker_seconds"],
                        sum(t["duration_s"] / t["pack_size"] for t in trials), rel_tol=1e-9)
    assert report["compute"]["largest_pack"] == max(t["pack_size"] for t in trials)
    ended = sorted(trials, key=lambda t: (t["finished_at"], t["number"]))
    position = [t["number"] for t in ended].index(best["number"])
    assert report["best_found"]["after_trials"] == position + 1
    assert report["best_found"]["after_trial_epochs"] == sum(
        len(t["intermediate_values"]) for t in ended[: position + 1])

    top = complete[:3]
    assert [t["trial_number"] for t in report["top_k"]] == [t["number"] for t in top]
    assert [t["value"] for t in report["top_k"]] == [t["value"] for t in top]
    assert report["spread"]["median"] == statistics.median(t["value"] for t in top)
    assert report["spread"]["near_best"] == sum(
        abs(t["value"] - best["value"]) <= 0.05 * abs(best["value"]) for t in complete)
    for name, (low, high) in report["spread"]["param_ranges"].items():
        assert (low, high) == (min(t["params"][name] for t in top),
                               max(t["params"][name] for t in top))


def test_the_job_spec_in_the_report_runs_the_same_job_again(
    stack: WorkerStack, finished_job: dict[str, Any]
) -> None:
    report = stack.client.get(f"/v1/jobs/{finished_job['id']}/report").json()
    spec = yaml.safe_load(report["job_spec_yaml"])
    assert JobCreate.model_validate(spec) == JobCreate.model_validate(finished_job["spec"])
    again = stack.client.post("/v1/jobs", json={**spec, "budget": {"n_trials": 1}})
    assert again.status_code == 201, again.text
    stack.client.post(f"/v1/jobs/{again.json()['id']}/cancel")


def test_the_cli_writes_the_report_page_that_the_server_serves(
    stack: WorkerStack, finished_job: dict[str, Any], server_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-m", "tuner_service.cli", "report", finished_job["id"],
         "--html", str(target), "--url", server_url],
        env={**settings_env(stack.settings), "TUNER_TOKEN": new_token(stack.settings)},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    page = target.read_text()
    assert "report-e2e" in page and "Plotly" in page  # plotly.js inlined: works offline
    assert all(f'id="plot-{key}"' in page for key in PLOTS)


def test_the_report_page_renders_every_plot_in_chromium(
    stack: WorkerStack, finished_job: dict[str, Any], server_url: str, tmp_path: Path
) -> None:
    sync_api = _playwright_or_skip()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu",
                                                 "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        page.goto(f"{server_url}/")  # not signed in: to the sign-in form, then back
        page.wait_for_url("**/signin?next=/")
        page.fill("#token", new_token(stack.settings))
        page.click("button[type=submit]")
        page.wait_for_url(f"{server_url}/")
        page.click(f"a[href='/v1/jobs/{finished_job['id']}/report.html']")
        page.wait_for_url(f"**/v1/jobs/{finished_job['id']}/report.html")
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(PLOTS)}",
            timeout=60_000)
        drawn = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'),"
                              " d => [d.id, d.data.length, d.getBoundingClientRect().width])")
        headline = page.inner_text("#headline")
        wide = page.evaluate("() => document.documentElement.scrollWidth")
        # Plotly draws parallel coordinates with WebGL, built by eval: under a CSP without
        # 'unsafe-eval' it shows this note instead, with no console error.
        no_webgl = "WebGL is not supported" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

        # The standalone page (what `tuner report --html` saves) draws offline from a file.
        saved = tmp_path / "saved.html"
        saved.write_text(httpx.get(f"{server_url}/v1/jobs/{finished_job['id']}/report.html",
                                   params={"standalone": True},
                                   headers=bearer(new_token(stack.settings))).text,
                         encoding="utf-8")
        offline = browser.new_page(viewport={"width": 1280, "height": 900})
        offline.on("pageerror", lambda error: errors.append(f"offline page error: {error}"))
        offline.route("**/*", lambda route: route.abort() if route.request.url.startswith(
            "http") else route.continue_())
        offline.goto(saved.as_uri())
        offline.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(PLOTS)}",
            timeout=60_000)
        browser.close()

    assert errors == []
    assert not no_webgl
    assert sorted(d[0] for d in drawn) == sorted(f"plot-{key}" for key in PLOTS)
    assert all(traces > 0 and width > 200 for _, traces, width in drawn), drawn
    assert wide <= 1280, "a plot overflows the page"
    assert f"{finished_job['best']['value']:.5g}" in headline
    assert "paper defaults" in headline
    assert (tmp_path / "report.png").stat().st_size > 50_000


def _playwright_or_skip() -> Any:
    """Playwright's Python package and Debian's chromium; CI (which installs both) must not
    skip."""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    if sync_api is None or not CHROMIUM.exists():
        message = "needs the playwright package and /usr/bin/chromium (apt install chromium)"
        if REQUIRE_SERVERS:
            pytest.fail(message)
        pytest.skip(message)
    return sync_api
