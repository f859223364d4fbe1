"""kombu's folder (filesystem) transport with atomic writes, for the embedded default.

kombu creates a message file, then locks and writes it. A worker polling the folder can move
the file away between those steps and read it empty; the JSON error that follows is fatal to
the Celery worker (seen in CI: the worker died and its job never ran). Here a message is
written under a name the queue scan skips, then renamed into place: a rename within one folder
is atomic, so a consumer sees a whole message or none.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """Writes each message to a hidden temporary file, then renames it into the queue."""

    # kombu types _put differently in its two base classes; this is filesystem.Channel's.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # kombu sorts the folder by name and reads '<millis>_<uuid>.<queue>.msg'.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: 'name.partition(".")[2]' is then not '<queue>.msg', so _get skips it.
        staging = os.path.join(self.data_folder_out, f".{name}.tmp")
        body = dumps(payload)  # type: ignore[no-untyped-call]
        try:
            with open(staging, "wb") as handle:
                handle.write(body.encode())
            os.replace(staging, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """The folder transport with :class:`Channel`."""

    Channel = Channel
