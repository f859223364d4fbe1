"""``tuner models``: upload a Keras model file, list the models a job may name, remove one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from tuner_service.cli.common import JsonOption, TokenOption, UrlOption, call, console, fail
from tuner_service.model_size import format_bytes
from tuner_service.schemas import ModelFilePublic, ModelsPublic

app = typer.Typer(help="Your own models: upload a .keras file once, then name it in jobs as "
                  "model: {id: ...}; or name a plugin the workers offer as model: {plugin: "
                  "...}.", no_args_is_help=True)


@app.command()
def upload(
    file: Annotated[Path, typer.Argument(help="A Keras 3 .keras file (model.save(...))")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name")] = None,
    wait: Annotated[bool, typer.Option(
        help="Wait for a worker's inspection (ready or rejected)")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the inspection")] = 300,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Upload a model file; prints its id and, once a worker inspected it, its shapes (exit
    1 when it is rejected)."""
    if not file.is_file():
        raise fail(f"{file}: no such file", 2)
    model = call(url, lambda client: client.upload_model(file, name=name), token)
    if wait and model.status == "validating":
        if not as_json:
            console.print(f"{model.id}: uploaded; a worker is inspecting it...",
                          highlight=False)
        model = call(url, lambda client: client.wait_for_model(model.id, timeout), token)
    if as_json:
        console.print_json(model.model_dump_json())
    else:
        console.print(f"[bold]{model.id}[/bold] {model.name}: {_summary(model)}",
                      highlight=False, soft_wrap=True)
    if model.status == "rejected":
        raise typer.Exit(1)
    if model.status == "ready" and not as_json:
        console.print(f"use it in a job as  model: {{id: {model.id}}}", highlight=False,
                      markup=False)


@app.command("list")
def list_models(url: UrlOption = None, token: TokenOption = None,
                as_json: JsonOption = False) -> None:
    """Built-in models, the plugins live workers offer, and your model files."""
    page = call(url, lambda client: client.models(limit=200), token)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    _print(page)


def _print(page: ModelsPublic) -> None:
    table = Table("model", "kind", "from", Column("workers", justify="right"), "takes",
                  title="Built-ins and plugins", title_justify="left")
    for builtin in page.builtins:
        table.add_row(f"builtin: {builtin.builtin}", "architecture", "tuner-service", "-",
                      ", ".join(builtin.options) or "-")
    for plugin in page.plugins:
        origin = f"{plugin.package} {plugin.version}" if plugin.package else "-"
        takes = (", ".join(hp.name for hp in plugin.hyperparameters) if plugin.kind ==
                 "hypermodel" else ", ".join(option.name for option in plugin.options))
        table.add_row(f"plugin: {plugin.name}", plugin.kind, origin, str(plugin.workers),
                      plugin.error or takes or "-")
    console.print(table)
    files = Table("id", "name", Column("size", justify="right"), "status", "input", "output",
                  Column("params", justify="right"), "uploaded",
                  title="Your model files", title_justify="left")
    for item in page.files:
        files.add_row(item.id, item.name, format_bytes(item.size_bytes), item.status,
                      _shape(item.input_shape), _shape(item.output_shape),
                      f"{item.n_params:,}" if item.n_params is not None else "-",
                      item.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(files)
    if page.total_files > len(page.files):
        console.print(f"({len(page.files)} of {page.total_files} files shown)")


@app.command("rm")
def remove(model_id: Annotated[str, typer.Argument(help="The id `tuner models list` shows")],
           url: UrlOption = None, token: TokenOption = None) -> None:
    """Delete a model file (refused while a queued or running job trains it)."""
    call(url, lambda client: client.delete_model(model_id), token)
    console.print(f"deleted model {model_id}")


def _shape(shape: list[int | None] | None) -> str:
    return "-" if shape is None else "x".join("?" if s is None else str(s) for s in shape)


def _summary(model: ModelFilePublic) -> str:
    size = format_bytes(model.size_bytes)
    if model.status == "rejected":
        return f"{size}, rejected: {model.reason}"
    if model.status == "validating":
        return f"{size}, still being inspected"
    return (f"{size}, ready: input {_shape(model.input_shape)}, output "
            f"{_shape(model.output_shape)}, {model.n_params:,} parameters")
