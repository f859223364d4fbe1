"""From a CSV file on disk to a best-config report with three commands: ``tuner datasets
upload``, ``tuner submit``, ``tuner report``; through a real HTTP server and a real worker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.api.test_datasets import diabetes_csv
from tests.conftest import WorkerStack, http_server, new_token
from tuner_service.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_a_csv_file_to_a_report_in_three_commands(stack: WorkerStack, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNER_TOKEN", new_token(stack.settings, "cli-team"))
    csv_file = tmp_path / "diabetes.csv"
    csv_file.write_bytes(diabetes_csv())
    with http_server(stack.settings) as url:
        uploaded = runner.invoke(app, ["datasets", "upload", str(csv_file), "--label-column",
                                       "progression", "--url", url])
        assert uploaded.exit_code == 0, uploaded.output
        dataset_id = re.search(r"dataset: \{id: ([0-9a-f]{32})\}", uploaded.output)
        assert dataset_id is not None, uploaded.output
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump({
            "model": {"builtin": "logistic_regression"},
            "dataset": {"id": dataset_id.group(1)},
            "objective": {"metric": "val_mean_absolute_error"},
            "budget": {"n_trials": 2, "epochs": 2}, "pruner": "none"}))
        submitted = runner.invoke(app, ["submit", str(spec), "--wait", "--url", url])
        assert submitted.exit_code == 0, submitted.output
        job_id = re.search(r"submitted job ([0-9a-f]{32})", submitted.output)
        assert job_id is not None
        report = runner.invoke(app, ["report", job_id.group(1), "--url", url])
        assert report.exit_code == 0, report.output
        assert "tuned on data set 'diabetes'" in report.output
        assert "keras.optimizers.Adam(" in report.output

        listed = runner.invoke(app, ["datasets", "list", "--url", url, "--json"])
        assert json.loads(listed.output)["items"][0]["id"] == dataset_id.group(1)
        refused = runner.invoke(app, ["datasets", "upload", str(spec), "--url", url])
        assert refused.exit_code == 1 and ".yaml" in refused.output
        removed = runner.invoke(app, ["datasets", "rm", dataset_id.group(1), "--url", url])
        assert removed.exit_code == 0, removed.output
        gone = runner.invoke(app, ["datasets", "rm", dataset_id.group(1), "--url", url])
        assert gone.exit_code == 1 and "not found" in gone.output
