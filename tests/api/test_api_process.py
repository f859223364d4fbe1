"""The API process never loads TensorFlow (it must stay light and fork-safe)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import new_token, settings_env
from tuner_service.config import Settings

SCRIPT = """
import sys
from fastapi.testclient import TestClient
from tuner_service.app import create_app
from tuner_service.config import Settings

with TestClient(create_app(Settings(), recover_every_s=None),
                headers={"Authorization": "Bearer " + Settings().token}) as client:
    job = client.post("/v1/jobs", json={"model": {"builtin": "cnn"},
                                        "dataset": {"builtin": "digits"}}).json()
    client.get("/v1/jobs")
    client.get(f"/v1/jobs/{job['id']}/trials")
    client.get(f"/v1/jobs/{job['id']}/report")
    client.post(f"/v1/jobs/{job['id']}/cancel")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("LOADED", heavy)
"""


def test_the_api_process_has_not_loaded_tensorflow(settings: Settings) -> None:
    env = {**settings_env(settings), "TUNER_TOKEN": new_token(settings)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
