"""What every ``tuner`` command shares: the consoles, option types, and calling the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from tuner_service.client import ApiError, TunerClient
from tuner_service.config import Settings

Answer = TypeVar("Answer")

console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[
    str | None, typer.Option("--url", help="API server (default: $TUNER_URL or localhost:8000)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", help="API token (default: $TUNER_TOKEN, else the file $TUNER_HOME/token that "
    "`tuner up` writes)", show_default=False)]


def client_for(url: str | None, token: str | None = None) -> TunerClient:
    """A client of the API at ``url``, else the configured one, with ``token``, else the
    configured one (see ``Settings.client_token``)."""
    return TunerClient(url, token=token)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error; returns the exit to raise (so callers read ``raise fail(...)``)."""
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def call(url: str | None, request: Callable[[TunerClient], Answer], token: str | None = None
         ) -> Answer:
    """Call the API; turn refusals and unreachable servers into messages and exit codes."""
    import httpx

    try:
        with client_for(url, token) as client:
            return request(client)
    except ApiError as error:
        raise fail(str(error), 2 if error.status_code == 422 else 1) from None
    except httpx.TransportError as error:
        raise fail(f"cannot reach the API at {url or Settings().url}: {error}") from None
    except ValidationError as error:
        # A server of another version: say so instead of a traceback.
        raise fail(f"the API at {url or Settings().url} answered in a shape this tuner does "
                   f"not know ({error.error_count()} field(s) differ); are the client and "
                   "server the same version?") from None
