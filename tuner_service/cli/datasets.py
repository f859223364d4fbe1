"""``tuner datasets``: upload a data set file, list the tenant's data sets, remove one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Column, Table

from tuner_service.cli.common import JsonOption, TokenOption, UrlOption, call, console, fail
from tuner_service.model_size import format_bytes
from tuner_service.schemas import DatasetPublic

app = typer.Typer(help="Your own data sets: upload a .npz, .csv or .parquet file once, then "
                  "name it in jobs as dataset: {id: ...}.", no_args_is_help=True)
# Below this a bar would only flash.
PROGRESS_FROM_BYTES = 8 * 2**20


@app.command()
def upload(
    file: Annotated[Path, typer.Argument(help=".npz (arrays x, y, or x_train, y_train, x_val, "
                                         "y_val), .csv with a header row, or .parquet")],
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help="The target column of a CSV or Parquet file")] = None,
    name: Annotated[str | None, typer.Option(help="Default: the file's name")] = None,
    task: Annotated[str | None, typer.Option(
        help="classes or values (regression); default: integer targets are classes, "
        "floating ones values")] = None,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Upload a data set; prints its id (the same file again gives the same data set)."""
    if not file.is_file():
        raise fail(f"{file}: no such file", 2)
    size = file.stat().st_size
    with Progress(BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                  console=console, transient=True,
                  disable=as_json or size < PROGRESS_FROM_BYTES) as progress:
        bar = progress.add_task("upload", total=size)
        dataset = call(url, lambda client: client.upload_dataset(
            file, name=name, label_column=label_column, task=task,
            progress=lambda sent: progress.advance(bar, sent)), token)
    if as_json:
        console.print_json(dataset.model_dump_json())
        return
    console.print(f"[bold]{dataset.id}[/bold] {dataset.name}: {_summary(dataset)}",
                  highlight=False)
    console.print(f"use it in a job as  dataset: {{id: {dataset.id}}}", highlight=False,
                  markup=False)


@app.command("list")
def list_datasets(url: UrlOption = None, token: TokenOption = None,
                  as_json: JsonOption = False) -> None:
    """Your data sets, newest first."""
    page = call(url, lambda client: client.datasets(limit=200), token)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table("id", "name", "format", Column("size", justify="right"),
                  Column("examples", justify="right"), "features", "target", "uploaded")
    for item in page.items:
        table.add_row(item.id, item.name, item.format, format_bytes(item.size_bytes),
                      f"{item.n_examples:,}", "x".join(map(str, item.feature_shape)),
                      _target(item), item.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)
    if page.total > len(page.items):
        console.print(f"({len(page.items)} of {page.total} shown)")


@app.command("rm")
def remove(dataset_id: Annotated[str, typer.Argument(help="The id `tuner datasets list` shows")],
           url: UrlOption = None, token: TokenOption = None) -> None:
    """Delete a data set (refused while a queued or running job trains on it)."""
    call(url, lambda client: client.delete_dataset(dataset_id), token)
    console.print(f"deleted data set {dataset_id}")


def _target(dataset: DatasetPublic) -> str:
    target = dataset.target
    return (f"{target.n_classes} classes" if target.kind == "classes"
            else f"{target.n_outputs} value(s)")


def _summary(dataset: DatasetPublic) -> str:
    splits = ", ".join(f"{count:,} {name}" for name, count in dataset.splits.items())
    return (f"{dataset.format}, {format_bytes(dataset.size_bytes)}, {splits} examples of "
            f"shape {list(dataset.feature_shape)}, {_target(dataset)}")
