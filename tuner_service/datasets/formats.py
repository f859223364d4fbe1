"""Read and validate a user's uploaded data set file: .npz, .csv or .parquet, without TensorFlow.

The API process calls ``read_dataset`` to refuse a bad upload (with a message a user can act on)
before storing it; workers call it again to get the arrays they train on. An uploaded file is
untrusted: nothing in it is ever unpickled or executed, an .npz's declared sizes are checked
before anything is decompressed, and each array's dtype is checked from its .npy header before
its data is read.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

Format = Literal["npz", "csv", "parquet"]
TargetKind = Literal["classes", "values"]

_EXTENSIONS: dict[str, Format] = {
    ".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
_PLAIN_MEMBERS = frozenset({"x.npy", "y.npy"})
_SPLIT_MEMBERS = frozenset({"x_train.npy", "y_train.npy", "x_val.npy", "y_val.npy"})
_ZIP_ENCRYPTED = 0x1  # general purpose bit flag 0 of a zip entry
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # a first member, or an empty archive
_NUMERIC_KINDS = "biuf"
_MAX_LISTED = 10
_MAX_ERROR_CHARS = 300
_SNIFF_BYTES = 64 * 1024
_FINITE_CHUNK = 1 << 20  # elements per NaN/inf scan step: bounds the scan's temporary masks
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")
# What reading a damaged or lying archive can raise, from zipfile, zlib and numpy's .npy reader.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError)
# pyarrow raises its own ArrowException subclasses (ArrowInvalid is also a ValueError).
_ARROW_ERRORS = (pa.ArrowException, ValueError, OSError)


class DatasetProblem(Exception):
    """A bad upload. status: HTTP status (413, 415 or 422); field: which form field is to blame
    ("file", "label_column" or "task"); message: says what is wrong, readable by a user."""

    def __init__(self, message: str, *, field: str = "file", status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Caps on an upload: what it may inflate to, how many classes, how few examples."""

    max_inflated_bytes: int  # npz and parquet: the declared uncompressed size may not exceed it
    max_classes: int  # more classes than this is refused
    min_examples: int = 10


@dataclass(frozen=True)
class Arrays:
    """The data to train on: features float32 C-contiguous, shape (n, *feature_shape)."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int32] | npt.NDArray[np.float32]  # int32 (n,) | float32 (n, k)
    x_val: npt.NDArray[np.float32] | None  # only when the file has its own validation split
    y_val: npt.NDArray[np.int32] | npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class Description:
    """What an upload holds, known once it has been validated."""

    format: Format
    n_examples: int  # all examples (train + own validation)
    feature_shape: tuple[int, ...]
    target_kind: TargetKind
    n_classes: int | None  # classes only
    n_outputs: int  # classes: n_classes; values: number of regression outputs (>=1)
    splits: dict[str, int]  # {"train": n, "validation": m} for an own split, else {"all": n}


@dataclass(frozen=True)
class _Split:
    """One split of the file: its key in Description.splits and its arrays' names."""

    key: str
    x: str
    y: str


_ALL = (_Split("all", "x", "y"),)
_OWN = (_Split("train", "x_train", "y_train"), _Split("validation", "x_val", "y_val"))

_Labels = npt.NDArray[np.int32]
_Values = npt.NDArray[np.float32]


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
        return _read_npz(path, task, limits)
    if fmt == "csv":
        return _read_csv(path, label_column, task, limits)
    if fmt == "parquet":
        return _read_parquet(path, label_column, task, limits)
    raise DatasetProblem(f"unsupported format {fmt!r}", status=415)


# --- .npz -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """An .npy member's header, read without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _read_npz(path: Path, task: TargetKind | None,
              limits: Limits) -> tuple[Arrays, Description]:
    with path.open("rb") as file:
        start = file.read(4)
    # np.load goes by the first bytes, zipfile by the last: a file must be a zip to both, or
    # an .npy with a zip appended would reach np.load as a single array.
    if start not in _ZIP_STARTS or not zipfile.is_zipfile(path):
        raise _not_a_zip(start)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            splits = _npz_layout(infos)
            _check_inflated_size(infos, limits)
            headers = {info.filename.removesuffix(".npy"): _npy_header(archive, info)
                       for info in infos}
    except _READ_ERRORS as exc:
        raise DatasetProblem(f"could not read the .npz archive: {_short(exc, path)}") from exc
    # Shapes from the headers: a wrong layout is refused before any data is decompressed.
    _check_layout({name: header.shape for name, header in headers.items()}, splits, limits)
    return _finish("npz", _load_npz(path, splits), splits, task, limits)


def _not_a_zip(start: bytes) -> DatasetProblem:
    if start in _ZIP_STARTS:
        # A zip's directory sits at its end: a cut-off upload starts right but has none.
        return DatasetProblem("the .npz archive is truncated or corrupt (no zip directory at "
                              "its end); upload the whole file again")
    return DatasetProblem("the file is not an .npz (zip) archive, so it does not match its "
                          ".npz extension; save arrays with numpy.savez or numpy.savez_compressed")


def _npz_layout(infos: Sequence[zipfile.ZipInfo]) -> tuple[_Split, ...]:
    """Which of the two allowed sets of arrays the archive holds; refuse anything else."""
    names: set[str] = set()
    for info in infos:
        _check_member(info)
        if info.filename in names:
            raise DatasetProblem(f"the .npz holds {info.filename!r} twice")
        names.add(info.filename)
    if names == _PLAIN_MEMBERS:
        return _ALL
    if names == _SPLIT_MEMBERS:
        return _OWN
    # Explain against whichever set the upload seems to aim at.
    split_hits = len(names & _SPLIT_MEMBERS)
    target = (_SPLIT_MEMBERS if split_hits and split_hits >= len(names & _PLAIN_MEMBERS)
              else _PLAIN_MEMBERS)
    problems = []
    if unexpected := sorted(names - target):
        problems.append(f"unexpected: {_listing(unexpected)}")
    if missing := sorted(name.removesuffix(".npy") for name in target - names):
        problems.append(f"missing: {', '.join(missing)}")
    raise DatasetProblem("the .npz must hold arrays x and y, or x_train, y_train, x_val and "
                         f"y_val, and nothing else; {'; '.join(problems)}")


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise DatasetProblem(f"the .npz member {name!r} is encrypted; upload it unencrypted")
    if info.is_dir() or any(mark in name for mark in ("/", "\\", "..", ":", "\x00")):
        raise DatasetProblem(f"unsafe member name {name!r} in the .npz: paths and directories "
                             "are not allowed, only top-level .npy arrays")


def _check_inflated_size(infos: Sequence[zipfile.ZipInfo], limits: Limits) -> None:
    # Declared sizes are all there is before decompressing; _npy_header later ties each header
    # to its declared size and zipfile never yields more than that, so this bound holds.
    inflated = sum(info.file_size for info in infos)
    if inflated > limits.max_inflated_bytes:
        raise DatasetProblem(
            f"the .npz would inflate to {inflated:,} bytes, more than the limit of "
            f"{limits.max_inflated_bytes:,} bytes", status=413)


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Header:
    """Read one member's .npy header (not its data) and check it against the declared size."""
    name = info.filename.removesuffix(".npy")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                # 3.0 only exists for structured dtypes with non-ASCII field names: not numeric.
                raise DatasetProblem(f"{name} uses .npy format version {version[0]}.{version[1]}"
                                     "; save it with numpy.savez (versions 1.0 and 2.0)")
            data_offset = member.tell()
    except _READ_ERRORS as exc:
        raise DatasetProblem(f"{name} is not a readable .npy array: {_short(exc)}") from exc
    _check_dtype(name, dtype)
    _check_declared_size(name, shape, dtype, info.file_size - data_offset)
    return _Header(shape, dtype)


def _check_dtype(name: str, dtype: np.dtype[Any]) -> None:
    if dtype.kind in _NUMERIC_KINDS:
        return
    if dtype.kind == "O":
        what = "dtype object"
    elif dtype.names:
        what = f"a structured dtype (fields {', '.join(dtype.names)})"
    elif dtype.kind in "SU":
        what = f"a string dtype ({dtype.str})"
    else:
        what = f"dtype {dtype}"
    raise DatasetProblem(f"arrays must be numeric (bool, integer or float); {name} has {what}")


def _check_declared_size(name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                         data_bytes: int) -> None:
    if any(dim < 0 for dim in shape):
        raise DatasetProblem(f"{name} declares an impossible shape {shape}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != data_bytes:
        raise DatasetProblem(
            f"{name} declares shape {shape} of {dtype} ({expected:,} bytes of data) but the "
            f"archive holds {data_bytes:,} bytes for it; the file is truncated or corrupt")


def _load_npz(path: Path, splits: Sequence[_Split]) -> dict[str, npt.NDArray[Any]]:
    arrays: dict[str, npt.NDArray[Any]] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for split in splits:
                # Converted as each is read, so at most one raw x is held next to the result.
                arrays[split.x] = _features(npz[split.x], split.x)
                arrays[split.y] = np.asarray(npz[split.y])
    except _READ_ERRORS as exc:
        raise DatasetProblem(f"could not read the .npz archive: {_short(exc, path)}") from exc
    return arrays


def _features(raw: npt.NDArray[Any], name: str) -> npt.NDArray[np.float32]:
    x = _float32(raw)
    _check_finite(x, name)
    return x


def _float32(raw: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """C-contiguous float32, copying only when it must."""
    # Values past float32's range become inf: _check_finite then refuses them by name, so
    # numpy's overflow warning would only be noise.
    with np.errstate(over="ignore"):
        return np.asarray(raw, dtype=np.float32, order="C")


# --- CSV and Parquet --------------------------------------------------------------------------


def _read_csv(path: Path, label_column: str | None, task: TargetKind | None,
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
        raise DatasetProblem(f"could not parse the CSV file: {_short(exc, path)}") from exc
    if table.num_rows == 0:
        # Before the column checks: every column of a header-only CSV has Arrow's null type.
        raise _no_rows()
    features = _checked_columns(table.schema, label)
    x, y = _table_arrays(table, features, label)
    del table  # the columns are copied out: let Arrow's buffers go before the checks
    return _tabular("csv", x, y, label, task, limits)


def _read_parquet(path: Path, label_column: str | None, task: TargetKind | None,
                  limits: Limits) -> tuple[Arrays, Description]:
    label = _required_label(label_column)
    _check_parquet_magic(path)
    try:
        metadata = pq.read_metadata(str(path))
        schema = metadata.schema.to_arrow_schema()
    except _ARROW_ERRORS as exc:
        raise DatasetProblem(f"could not read the Parquet file: {_short(exc, path)}"
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
        raise DatasetProblem(f"could not read the Parquet file: {_short(exc, path)}"
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
    return _finish(fmt, {"x": x, label_name: y}, (_Split("all", "x", label_name),), task, limits)


def _no_rows() -> DatasetProblem:
    return DatasetProblem("the file has column names but no data rows")


def _checked_columns(schema: Any, label: str) -> list[str]:
    """The feature columns' names, once every column to be read is known to be numeric."""
    # pandas' to_parquet stores a non-default index as a column; it is not a feature.
    names = [name for name in schema.names if not _PANDAS_INDEX.fullmatch(name)]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DatasetProblem(f"column names must be unique; repeated: {_listing(duplicates)}")
    if label not in names:
        hint = ""
        if names and all(_is_number(name) for name in names):
            hint = "; the first row must be a header naming the columns"
        raise DatasetProblem(f"label column {label!r} not found; columns found: "
                             f"{_listing(names)}{hint}", field="label_column")
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
        column = _float32(table.column(name).to_numpy())
        _check_finite(column, f"column {name!r}")
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


# --- all formats ------------------------------------------------------------------------------


def _finish(fmt: Format, arrays: Mapping[str, npt.NDArray[Any]], splits: Sequence[_Split],
            task: TargetKind | None, limits: Limits) -> tuple[Arrays, Description]:
    """Validate the loaded arrays (x already float32 and finite) and describe them."""
    _check_layout({name: array.shape for name, array in arrays.items()}, splits, limits)
    ys = [arrays[split.y] for split in splits]
    y_names = [split.y for split in splits]
    kind: TargetKind = task or ("values" if any(y.dtype.kind == "f" for y in ys) else "classes")
    targets: Sequence[_Labels] | Sequence[_Values]
    n_classes: int | None
    if kind == "classes":
        targets, n_classes = _class_targets(ys, y_names, limits)
        n_outputs = n_classes
    else:
        targets = _value_targets(ys, y_names)
        n_classes, n_outputs = None, int(targets[0].shape[1])
    xs = [arrays[split.x] for split in splits]
    own = len(splits) == 2
    data = Arrays(x_train=xs[0], y_train=targets[0],
                  x_val=xs[1] if own else None, y_val=targets[1] if own else None)
    counts = {split.key: int(x.shape[0]) for split, x in zip(splits, xs, strict=True)}
    description = Description(
        format=fmt, n_examples=sum(counts.values()), feature_shape=tuple(xs[0].shape[1:]),
        target_kind=kind, n_classes=n_classes, n_outputs=n_outputs, splits=counts)
    return data, description


def _check_layout(shapes: Mapping[str, tuple[int, ...]], splits: Sequence[_Split],
                  limits: Limits) -> None:
    """Shapes only, so that an .npz is checked from its headers before its data is read."""
    for split in splits:
        _check_split_shapes(split, shapes[split.x], shapes[split.y])
    if len(splits) == 2:
        train, val = splits
        for a, b in ((train.x, val.x), (train.y, val.y)):
            if shapes[a][1:] != shapes[b][1:]:
                raise DatasetProblem(
                    f"{a} and {b} must have the same shape per example; {a} has shape "
                    f"{shapes[a]} and {b} has shape {shapes[b]}")
    first = splits[0]
    n = shapes[first.x][0]
    if n < limits.min_examples:
        where = "" if len(splits) == 1 else f" in {first.x}"
        raise DatasetProblem(f"only {n} examples{where}; at least {limits.min_examples} are "
                             "needed")


def _check_split_shapes(split: _Split, x: tuple[int, ...], y: tuple[int, ...]) -> None:
    for name, shape in ((split.x, x), (split.y, y)):
        if math.prod(shape) == 0:
            raise DatasetProblem(f"{name} is empty (shape {shape}); it needs at least one "
                                 "example, and x at least one feature")
    if len(x) < 2:
        raise DatasetProblem(f"{split.x} must be at least 2-D (one row per example, then the "
                             f"features); it has shape {x}")
    if len(y) not in (1, 2):
        raise DatasetProblem(f"{split.y} must be 1-D (n,) or 2-D (n, outputs); it has shape {y}")
    if x[0] != y[0]:
        raise DatasetProblem(f"{split.x} has {x[0]} examples but {split.y} has {y[0]}; they "
                             "must have one row per example")


def _class_targets(ys: Sequence[npt.NDArray[Any]], names: Sequence[str],
                   limits: Limits) -> tuple[list[_Labels], int]:
    """Labels as int32 (n,), and how many classes: exactly 0..K-1, each present somewhere."""
    flat = [_label_vector(y, name) for y, name in zip(ys, names, strict=True)]
    lowest = min(int(y.min()) for y in flat)
    highest = max(int(y.max()) for y in flat)
    if lowest < 0:
        raise DatasetProblem(f"class labels must be 0..K-1; found negative labels (the smallest "
                             f"is {lowest})")
    n_classes = highest + 1
    # Checked before counting, so that a stray huge label cannot make a huge count array.
    if n_classes > limits.max_classes:
        raise DatasetProblem(f"labels go up to {highest}, so {n_classes} classes; at most "
                             f"{limits.max_classes} classes are allowed on this server "
                             "(TUNER_MAX_CLASSES)")
    counts = sum(np.bincount(y.astype(np.int64), minlength=n_classes) for y in flat)
    missing = np.flatnonzero(np.asarray(counts) == 0).tolist()
    if missing:
        raise DatasetProblem(f"class labels must be exactly 0..{highest} with every class "
                             f"present; missing labels: {_listing(missing)}")
    if n_classes < 2:
        raise DatasetProblem("at least 2 classes are needed; every label is 0")
    return [np.ascontiguousarray(y, dtype=np.int32) for y in flat], n_classes


def _label_vector(y: npt.NDArray[Any], name: str) -> npt.NDArray[Any]:
    if y.ndim == 2 and y.shape[1] != 1:
        raise DatasetProblem(f"class labels must be one integer per example; {name} has shape "
                             f"{y.shape} (one-hot? save the class indices, y.argmax(axis=1))")
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        # Only task="classes" brings floats here: they must be whole numbers.
        _check_finite(y, name)
        fractional = np.flatnonzero(y != np.trunc(y))
        if fractional.size:
            raise DatasetProblem(
                f"task 'classes' needs whole-number labels, but {name} has {fractional.size} "
                f"non-integral value(s), e.g. {y[fractional[0]]}", field="task")
    return y


def _value_targets(ys: Sequence[npt.NDArray[Any]], names: Sequence[str]) -> list[_Values]:
    """Regression targets as float32 (n, outputs)."""
    targets = []
    for y, name in zip(ys, names, strict=True):
        target = _float32(y)
        if target.ndim == 1:
            target = target.reshape(-1, 1)
        _check_finite(target, name)
        targets.append(target)
    return targets


def _check_finite(array: npt.NDArray[np.floating[Any]], name: str) -> None:
    flat = array.reshape(-1)  # a view: the arrays here are contiguous
    nan = inf = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start:start + _FINITE_CHUNK]
        if not np.isfinite(part).all():
            nan += int(np.count_nonzero(np.isnan(part)))
            inf += int(np.count_nonzero(np.isinf(part)))
    if nan or inf:
        counts = (f"{nan} NaN" if nan else "", f"{inf} infinite (±inf)" if inf else "")
        found = " and ".join(count for count in counts if count)
        hint = " (values beyond float32's range, about ±3.4e38, count as infinite)" if inf else ""
        raise DatasetProblem(f"{name} contains {found} value(s); every value must be "
                             f"finite{hint}")


def _listing(items: Sequence[object]) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item)
                      for item in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _short(exc: BaseException, path: Path | None = None) -> str:
    """A library's error message, on one line, cut short, without the server's file path."""
    text = str(exc)
    if path is not None:
        text = text.replace(str(path), path.name)
    text = " ".join(text.split()) or type(exc).__name__
    if len(text) > _MAX_ERROR_CHARS:
        return text[:_MAX_ERROR_CHARS - 1] + "…"
    return text
