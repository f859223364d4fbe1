"""Read and validate a user's uploaded data set file: .npz, .csv or .parquet, without TensorFlow.

The API process calls ``read_dataset`` to refuse a bad upload (with a message a user can act on)
before storing it; workers call it again to get the arrays they train on. An uploaded file is
untrusted: nothing in it is ever unpickled or executed, an .npz's declared sizes are checked
before anything is decompressed, and each array's dtype is checked from its .npy header before
its data is read.
"""

from __future__ import annotations

from pathlib import Path

from tuner_service.datasets.checks import (
    Arrays,
    DatasetProblem,
    Description,
    Format,
    Limits,
    TargetKind,
)
from tuner_service.datasets.npz_format import read_npz
from tuner_service.datasets.table_formats import read_csv, read_parquet

__all__ = ["Arrays", "DatasetProblem", "Description", "Format", "Limits", "TargetKind",
           "format_of", "read_dataset"]

_EXTENSIONS: dict[str, Format] = {
    ".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}


def format_of(filename: str) -> Format:
    """The format of an upload named ``filename``, from its extension (case-insensitive).

    Raises DatasetProblem (415) for any other extension.
    """
    suffix = Path(filename).suffix.lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise DatasetProblem(
            f"unsupported file type: {filename!r} has {what}; "
            f"supported: {', '.join(_EXTENSIONS)}", status=415)
    return fmt


def read_dataset(path: Path, fmt: Format, *, label_column: str | None,
                 task: TargetKind | None, limits: Limits) -> tuple[Arrays, Description]:
    """Read the data set file at ``path`` and validate it; raise DatasetProblem on any problem.

    ``label_column`` names the target column of a CSV or Parquet file (an .npz names its
    arrays instead, so it is ignored there). ``task`` overrides the target kind that y's dtype
    implies (integers: classes, floats: values). Nothing in the file is ever unpickled.
    """
    if task not in (None, "classes", "values"):
        raise DatasetProblem(f"task must be 'classes' or 'values', not {task!r}", field="task")
    if fmt == "npz":
        return read_npz(path, task, limits)
    if fmt == "csv":
        return read_csv(path, label_column, task, limits)
    if fmt == "parquet":
        return read_parquet(path, label_column, task, limits)
    raise DatasetProblem(f"unsupported format {fmt!r}", status=415)

