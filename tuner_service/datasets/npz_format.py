"""Reading an uploaded .npz: declared sizes checked before anything is decompressed, each
array's dtype read from its .npy header before its data, nothing ever unpickled."""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tuner_service.datasets.checks import (
    OWN_SPLIT,
    WHOLE,
    Arrays,
    DatasetProblem,
    Description,
    Limits,
    Split,
    TargetKind,
    check_finite,
    check_layout,
    finish,
    float32,
    listing,
    short_error,
)
from tuner_service.zip_directory import directory_of, too_large

_PLAIN_MEMBERS = frozenset({"x.npy", "y.npy"})
_SPLIT_MEMBERS = frozenset({"x_train.npy", "y_train.npy", "x_val.npy", "y_val.npy"})
# The directory is checked for at most this many members before it is read (see zip_directory).
MAX_NPZ_MEMBERS = 64
_ZIP_ENCRYPTED = 0x1  # general purpose bit flag 0 of a zip entry
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # a first member, or an empty archive
_NUMERIC_KINDS = "biuf"
# What reading a damaged or lying archive can raise, from zipfile, zlib and numpy's .npy reader.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError)



@dataclass(frozen=True)
class _Header:
    """An .npy member's header, read without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def read_npz(path: Path, task: TargetKind | None,
              limits: Limits) -> tuple[Arrays, Description]:
    with path.open("rb") as file:
        start = file.read(4)
    # np.load goes by the first bytes, zipfile by the last: a file must be a zip to both, or
    # an .npy with a zip appended would reach np.load as a single array.
    if start not in _ZIP_STARTS or not zipfile.is_zipfile(path):
        raise _not_a_zip(start)
    with path.open("rb") as file:
        crowded = too_large(directory_of(file), max_entries=MAX_NPZ_MEMBERS)
    if crowded is not None:
        raise DatasetProblem(f"{crowded} (x and y, or x_train, y_train, x_val and y_val)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            splits = _npz_layout(infos)
            _check_inflated_size(infos, limits)
            headers = {info.filename.removesuffix(".npy"): _npy_header(archive, info)
                       for info in infos}
    except _READ_ERRORS as exc:
        raise DatasetProblem(f"could not read the .npz archive: {short_error(exc, path)}") from exc
    # Shapes from the headers: a wrong layout is refused before any data is decompressed.
    check_layout({name: header.shape for name, header in headers.items()}, splits, limits)
    return finish("npz", _load_npz(path, splits), splits, task, limits)


def _not_a_zip(start: bytes) -> DatasetProblem:
    if start in _ZIP_STARTS:
        # A zip's directory sits at its end: a cut-off upload starts right but has none.
        return DatasetProblem("the .npz archive is truncated or corrupt (no zip directory at "
                              "its end); upload the whole file again")
    return DatasetProblem("the file is not an .npz (zip) archive, so it does not match its "
                          ".npz extension; save arrays with numpy.savez or numpy.savez_compressed")


def _npz_layout(infos: Sequence[zipfile.ZipInfo]) -> tuple[Split, ...]:
    """Which of the two allowed sets of arrays the archive holds; refuse anything else."""
    names: set[str] = set()
    for info in infos:
        _check_member(info)
        if info.filename in names:
            raise DatasetProblem(f"the .npz holds {info.filename!r} twice")
        names.add(info.filename)
    if names == _PLAIN_MEMBERS:
        return WHOLE
    if names == _SPLIT_MEMBERS:
        return OWN_SPLIT
    # Explain against whichever set the upload seems to aim at.
    split_hits = len(names & _SPLIT_MEMBERS)
    target = (_SPLIT_MEMBERS if split_hits and split_hits >= len(names & _PLAIN_MEMBERS)
              else _PLAIN_MEMBERS)
    problems = []
    if unexpected := sorted(names - target):
        problems.append(f"unexpected: {listing(unexpected)}")
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
        raise DatasetProblem(f"{name} is not a readable .npy array: {short_error(exc)}") from exc
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


def _load_npz(path: Path, splits: Sequence[Split]) -> dict[str, npt.NDArray[Any]]:
    arrays: dict[str, npt.NDArray[Any]] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for split in splits:
                # Converted as each is read, so at most one raw x is held next to the result.
                arrays[split.x] = _features(npz[split.x], split.x)
                arrays[split.y] = np.asarray(npz[split.y])
    except _READ_ERRORS as exc:
        raise DatasetProblem(f"could not read the .npz archive: {short_error(exc, path)}") from exc
    return arrays


def _features(raw: npt.NDArray[Any], name: str) -> npt.NDArray[np.float32]:
    x = float32(raw)
    check_finite(x, name)
    return x

