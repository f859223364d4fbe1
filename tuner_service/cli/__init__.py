"""The ``tuner`` command: run the service, and submit and watch jobs over HTTP.

Commands live by concern (``serving``, ``jobs``, ``tokens``) and register here, in the order
``--help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from tuner_service.cli import datasets, jobs, models, serving, tokens
from tuner_service.cli.jobs import load_yaml
from tuner_service.cli.rendering import print_report
from tuner_service.cli.serving import EXAMPLE_SPEC, host_hint

__all__ = ["EXAMPLE_SPEC", "app", "host_hint", "load_yaml", "main", "print_report"]

app = typer.Typer(help="Find the best Adam settings for Keras models.", no_args_is_help=True)

for command in (serving.migrate, serving.api, serving.worker, serving.up, jobs.submit,
                jobs.jobs, jobs.status, jobs.cancel, jobs.report):
    app.command()(command)
app.command("open")(tokens.open_pages)
app.command()(serving.demo)
app.add_typer(datasets.app, name="datasets")
app.add_typer(models.app, name="models")
app.add_typer(tokens.app, name="token")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
