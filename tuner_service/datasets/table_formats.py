"""Reading an uploaded CSV or Parquet table: a label column for the target, every other column
a numeric feature; Parquet's column types are checked from its footer before any data."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tuner_service.datasets.checks import (
    Arrays,
    DatasetProblem,
    Description,
    Format,
    Limits,
    Split,
    TargetKind,
    check_finite,
    finish,
    float32,
    listing,
    short_error,
)

_SNIFF_BYTES = 64 * 1024
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")
# pyarrow raises its own ArrowException subclasses (ArrowInvalid is also a ValueError).
_ARROW_ERRORS = (pa.ArrowException, ValueError, OSError)



def read_csv(path: Path, label_column: str | None, task: TargetKind | None,
              limits: Limits) -> tuple[Arrays, Description]:
    label = _required_label(label_column)
    with path.open("rb") as file:
        # pyarrow would read most binary files as one odd text column; say what it is instead.
        if b"\x00" in file.read(_SNIFF_BYTES):
            raise DatasetProblem("the file is binary, not a CSV text file, so it does not match "
                                 "its .csv extension")
    try:
        table = pa_csv.read_csv(str(path))
    except _ARROW_ERRORS as exc:
        raise DatasetProblem(f"could not parse the CSV file: {short_error(exc, path)}") from exc
    if table.num_rows == 0:
        # Before the column checks: every column of a header-only CSV has Arrow's null type.
        raise _no_rows()
    features = _checked_columns(table.schema, label)
    x, y = _table_arrays(table, features, label)
    del table  # the columns are copied out: let Arrow's buffers go before the checks
    return _tabular("csv", x, y, label, task, limits)


def read_parquet(path: Path, label_column: str | None, task: TargetKind | None,
                  limits: Limits) -> tuple[Arrays, Description]:
    label = _required_label(label_column)
    _check_parquet_magic(path)
    try:
        metadata = pq.read_metadata(str(path))
        schema = metadata.schema.to_arrow_schema()
    except _ARROW_ERRORS as exc:
        raise DatasetProblem(f"could not read the Parquet file: {short_error(exc, path)}"
                             ) from exc
    # The footer's schema is checked before any column is decoded: with only fixed-width
    # numeric columns left, the decoded size is exact, whatever the encoding and compression
    # (one repeated value can decode to gigabytes).
    features = _checked_columns(schema, label)
    wanted = [*features, label]
    row_bytes = sum(max(schema.field(name).type.bit_width, 8) // 8 for name in wanted)
    inflated = int(metadata.num_rows) * row_bytes
    if inflated > limits.max_inflated_bytes:
        raise DatasetProblem(
            f"the Parquet file would inflate to {inflated:,} bytes, more than the limit of "
            f"{limits.max_inflated_bytes:,} bytes", status=413)
    try:
        table = pq.read_table(str(path), columns=wanted)
    except _ARROW_ERRORS as exc:
        raise DatasetProblem(f"could not read the Parquet file: {short_error(exc, path)}"
                             ) from exc
    x, y = _table_arrays(table, features, label)
    del table  # the columns are copied out: let Arrow's buffers go before the checks
    return _tabular("parquet", x, y, label, task, limits)


def _check_parquet_magic(path: Path) -> None:
    with path.open("rb") as file:
        start = file.read(4)
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(size - 4, 0))
        end = file.read(4)
    if start != b"PAR1":
        raise DatasetProblem("the file is not a Parquet file (no PAR1 magic), so it does not "
                             "match its .parquet extension")
    if size < 12 or end != b"PAR1":
        raise DatasetProblem("the Parquet file is truncated or corrupt (no PAR1 footer); "
                             "upload the whole file again")


def _required_label(label_column: str | None) -> str:
    if label_column is None or not label_column.strip():
        raise DatasetProblem("label_column is required for CSV and Parquet files",
                             field="label_column")
    return label_column


def _tabular(fmt: Format, x: npt.NDArray[np.float32], y: npt.NDArray[Any], label: str,
             task: TargetKind | None, limits: Limits) -> tuple[Arrays, Description]:
    if len(x) == 0:
        raise _no_rows()
    label_name = f"label column {label!r}"
    return finish(fmt, {"x": x, label_name: y}, (Split("all", "x", label_name),), task, limits)


def _no_rows() -> DatasetProblem:
    return DatasetProblem("the file has column names but no data rows")


def _checked_columns(schema: Any, label: str) -> list[str]:
    """The feature columns' names, once every column to be read is known to be numeric."""
    # pandas' to_parquet stores a non-default index as a column; it is not a feature.
    names = [name for name in schema.names if not _PANDAS_INDEX.fullmatch(name)]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DatasetProblem(f"column names must be unique; repeated: {listing(duplicates)}")
    if label not in names:
        hint = ""
        if names and all(_is_number(name) for name in names):
            hint = "; the first row must be a header naming the columns"
        raise DatasetProblem(f"label column {label!r} not found; columns found: "
                             f"{listing(names)}{hint}", field="label_column")
    for name in names:
        _check_column_type(name, schema.field(name).type, name == label)
    features = [name for name in names if name != label]
    if not features:
        raise DatasetProblem(f"the file has no feature columns, only the label column {label!r}")
    return features


def _check_column_type(name: str, arrow_type: Any, is_label: bool) -> None:
    if _is_numeric(arrow_type):
        return
    if pa.types.is_null(arrow_type):
        # What pyarrow infers for a CSV column with no values at all.
        raise DatasetProblem(f"column {name!r} has no values; fill or drop it")
    if is_label:
        raise DatasetProblem(f"label column {name!r} has type {arrow_type}; it must hold "
                             "numbers: class indices 0..K-1 or regression values",
                             field="label_column")
    raise DatasetProblem(f"feature columns must be numeric (int, float or bool); column "
                         f"{name!r} has type {arrow_type}")


def _table_arrays(table: Any, features: Sequence[str],
                  label: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """Features as float32 (n, n_features) and the label column, from a checked table."""
    for name in [*features, label]:
        nulls = int(table.column(name).null_count)
        if nulls:
            raise DatasetProblem(f"column {name!r} has {nulls} missing (null or empty) "
                                 "value(s); fill or drop them")
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = float32(table.column(name).to_numpy())
        check_finite(column, f"column {name!r}")
        x[:, j] = column
    return x, np.asarray(table.column(label).to_numpy())


def _is_numeric(arrow_type: Any) -> bool:
    types = pa.types
    return bool(types.is_integer(arrow_type) or types.is_floating(arrow_type)
                or types.is_boolean(arrow_type))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

