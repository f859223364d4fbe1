"""The embedded folder broker under a producer and a consumer racing over one folder.

kombu's own folder transport creates a message file before it writes it, so a consumer can
read it empty, and the worker dies on the JSON error (it happened in CI; run by hand, this race
broke kombu's transport in 2 of 4 runs). Ours renames a finished file into place.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from kombu import Connection

from tuner_service.config import Settings
from tuner_service.queue import celery_config

MESSAGES = 400


def _race(transport: type, folder: Path) -> list[int]:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
               "control_folder": str(folder / "control"), "polling_interval": 0.001}
    received: list[int] = []
    with Connection(transport=transport, transport_options=options) as producer_conn, \
            Connection(transport=transport, transport_options=options) as consumer_conn:
        outbox = producer_conn.SimpleQueue("race")
        inbox = consumer_conn.SimpleQueue("race")

        def produce() -> None:
            for number in range(MESSAGES):
                outbox.put({"n": number, "pad": "x" * 2000})

        writer = threading.Thread(target=produce)
        writer.start()
        while len(received) < MESSAGES:
            message = inbox.get(timeout=30)
            received.append(message.payload["n"])
            message.ack()
        writer.join()
    return received


def test_every_message_arrives_whole_while_the_consumer_polls(tmp_path: Path) -> None:
    # A fresh interpreter, as a worker and the API are: kombu keeps per-process transport state
    # that other tests in this process have already used.
    code = ("import sys, pathlib; from tests.test_folder_broker import _race; "
            "from tuner_service.folder_broker import Transport; "
            "print(sorted(_race(Transport, pathlib.Path(sys.argv[1]))) == list(range(400)))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_the_embedded_default_uses_the_atomic_transport(tmp_path: Path) -> None:
    config = celery_config(Settings(home=tmp_path))
    assert config["broker_transport"] == "tuner_service.folder_broker:Transport"
