"""``tuner models upload/list/rm`` and a job YAML naming a model file and a plugin, through a
real HTTP server and a real worker: from a .keras file on disk to a report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import WorkerStack, http_server, new_token
from tests.test_models_end_to_end import DIGITS, offered, save_model
from tuner_service.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


# The commands speak HTTP only: one backend is enough here (tests/test_models_end_to_end.py
# runs the same paths on both).
@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_keras_file_to_a_report_and_a_plugin_from_yaml(
        stack: WorkerStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNER_TOKEN", new_token(stack.settings, "cli-models"))
    model_file = tmp_path / "digits-net.keras"
    save_model(model_file, DIGITS, 10)
    with http_server(stack.settings) as url:
        uploaded = runner.invoke(app, ["models", "upload", str(model_file), "--url", url])
        assert uploaded.exit_code == 0, uploaded.output
        assert "ready: input 8x8x1, output 10" in uploaded.output
        model_id = re.search(r"model: \{id: ([0-9a-f]{32})\}", uploaded.output)
        assert model_id is not None, uploaded.output
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump({
            "model": {"id": model_id.group(1), "weights": "file"},
            "dataset": {"builtin": "digits"}, "confirm": False,
            "budget": {"n_trials": 2, "epochs": 1}, "pruner": "none"}))
        submitted = runner.invoke(app, ["submit", str(spec), "--wait", "--url", url])
        assert submitted.exit_code == 0, submitted.output
        job_id = re.search(r"submitted job ([0-9a-f]{32})", submitted.output)
        assert job_id is not None
        report = runner.invoke(app, ["report", job_id.group(1), "--url", url])
        assert report.exit_code == 0, report.output
        assert "model: model file 'digits-net'" in report.output

        offered(stack)
        plugin = tmp_path / "plugin.yaml"
        plugin.write_text(yaml.safe_dump({
            "model": {"plugin": "tiny_mlp", "options": {"units": 4}},
            "dataset": {"builtin": "digits"}, "confirm": False,
            "budget": {"n_trials": 1, "epochs": 1}}))
        submitted = runner.invoke(app, ["submit", str(plugin), "--wait", "--url", url])
        assert submitted.exit_code == 0, submitted.output

        listed = runner.invoke(app, ["models", "list", "--url", url], env={"COLUMNS": "200"})
        assert listed.exit_code == 0, listed.output
        assert "plugin: tiny_mlp" in listed.output and "digits-net" in listed.output
        as_json = json.loads(runner.invoke(app, ["models", "list", "--url", url,
                                                 "--json"]).output)
        assert as_json["files"][0]["id"] == model_id.group(1)
        refused = runner.invoke(app, ["models", "upload", str(spec), "--url", url])
        assert refused.exit_code == 2  # refused like an invalid job spec (422)
        assert "upload refused" in refused.output and ".keras" in refused.output
        removed = runner.invoke(app, ["models", "rm", model_id.group(1), "--url", url])
        assert removed.exit_code == 0, removed.output
        gone = runner.invoke(app, ["models", "rm", model_id.group(1), "--url", url])
        assert gone.exit_code == 1 and "not found" in gone.output
