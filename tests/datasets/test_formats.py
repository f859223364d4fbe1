"""Uploaded data set files, read and validated: real files written to disk, good and bad."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_diabetes

from tuner_service.datasets.formats import (
    Arrays,
    DatasetProblem,
    Description,
    Limits,
    TargetKind,
    format_of,
    read_dataset,
)

LIMITS = Limits(max_inflated_bytes=4_000_000, max_classes=20)


def _read(path: Path, *, label_column: str | None = None, task: TargetKind | None = None,
          limits: Limits = LIMITS) -> tuple[Arrays, Description]:
    return read_dataset(path, format_of(path.name), label_column=label_column, task=task,
                        limits=limits)


def _labels(n: int, k: int) -> np.ndarray:
    """n labels with every one of 0..k-1 present."""
    return np.arange(n) % k


def _savez(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes],
         compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _table_csv(path: Path, header: str, rows: list[str]) -> Path:
    return _csv(path, "\n".join([header, *rows]) + "\n")


def _assert_features(x: np.ndarray | None, shape: tuple[int, ...]) -> None:
    assert x is not None
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert x.shape == shape


# --- good files --------------------------------------------------------------------------------


def test_npz_classes(tmp_path: Path) -> None:
    x = np.arange(30 * 16, dtype=np.uint8).reshape(30, 4, 4)
    path = _savez(tmp_path / "digits.npz", x=x, y=_labels(30, 3))
    arrays, described = _read(path)
    assert described == Description(format="npz", n_examples=30, feature_shape=(4, 4),
                                    target_kind="classes", n_classes=3, n_outputs=3,
                                    splits={"all": 30})
    _assert_features(arrays.x_train, (30, 4, 4))
    np.testing.assert_array_equal(arrays.x_train, x)
    assert arrays.y_train.dtype == np.int32
    assert arrays.y_train.shape == (30,)
    assert arrays.x_val is None
    assert arrays.y_val is None


def test_npz_own_split(tmp_path: Path) -> None:
    # Fortran-ordered float64 features and (n, 1) labels; class 2 appears only in validation.
    x_train = np.asfortranarray(np.random.default_rng(0).normal(size=(20, 3)))
    path = tmp_path / "split.npz"
    np.savez_compressed(path, x_train=x_train, y_train=_labels(20, 2).reshape(-1, 1),
                        x_val=np.ones((5, 3)), y_val=np.array([[0], [1], [2], [2], [1]]))
    arrays, described = _read(path)
    assert described == Description(format="npz", n_examples=25, feature_shape=(3,),
                                    target_kind="classes", n_classes=3, n_outputs=3,
                                    splits={"train": 20, "validation": 5})
    _assert_features(arrays.x_train, (20, 3))
    _assert_features(arrays.x_val, (5, 3))
    np.testing.assert_allclose(arrays.x_train, x_train.astype(np.float32))
    assert arrays.y_train.dtype == np.int32
    assert arrays.y_train.shape == (20,)
    assert arrays.y_val is not None
    assert arrays.y_val.tolist() == [0, 1, 2, 2, 1]


@pytest.mark.parametrize(("y_shape", "n_outputs"), [((40,), 1), ((40, 2), 2)],
                         ids=["one-output", "two-outputs"])
def test_npz_regression(tmp_path: Path, y_shape: tuple[int, ...], n_outputs: int) -> None:
    rng = np.random.default_rng(1)
    path = _savez(tmp_path / "reg.npz", x=rng.normal(size=(40, 5)), y=rng.normal(size=y_shape))
    arrays, described = _read(path)
    assert described.target_kind == "values"
    assert described.n_classes is None
    assert described.n_outputs == n_outputs
    assert described.splits == {"all": 40}
    _assert_features(arrays.x_train, (40, 5))
    assert arrays.y_train.dtype == np.float32
    assert arrays.y_train.shape == (40, n_outputs)


def test_csv_regression_diabetes(tmp_path: Path) -> None:
    data = load_diabetes()
    path = tmp_path / "diabetes.csv"
    np.savetxt(path, np.column_stack([data.data, data.target]), delimiter=",",
               header=",".join([*data.feature_names, "progression"]), comments="")
    arrays, described = _read(path, label_column="progression")
    assert described == Description(format="csv", n_examples=442, feature_shape=(10,),
                                    target_kind="values", n_classes=None, n_outputs=1,
                                    splits={"all": 442})
    _assert_features(arrays.x_train, (442, 10))
    np.testing.assert_allclose(arrays.x_train, data.data.astype(np.float32))
    assert arrays.y_train.dtype == np.float32
    np.testing.assert_allclose(arrays.y_train[:, 0], data.target)


def test_csv_classes(tmp_path: Path) -> None:
    # The label column sits between features; a bool column is a feature too.
    rows = [f"{i * 0.5},{i % 3},{'true' if i % 2 else 'false'}" for i in range(12)]
    path = _table_csv(tmp_path / "iris.CSV", "width,species,wet", rows)
    arrays, described = _read(path, label_column="species")
    assert described.format == "csv"
    assert (described.target_kind, described.n_classes, described.n_outputs) == ("classes", 3, 3)
    assert described.feature_shape == (2,)
    _assert_features(arrays.x_train, (12, 2))
    assert arrays.x_train[3].tolist() == [1.5, 1.0]
    assert arrays.y_train.dtype == np.int32
    assert arrays.y_train.tolist() == [i % 3 for i in range(12)]


def test_parquet_classes(tmp_path: Path) -> None:
    # __index_level_0__ is how pandas' to_parquet stores a DataFrame's index: not a feature.
    table = pa.table({"a": np.linspace(0, 1, 15), "b": np.arange(15, dtype=np.int16),
                      "flag": np.arange(15) % 2 == 0, "label": _labels(15, 4),
                      "__index_level_0__": np.arange(100, 115)})
    path = tmp_path / "data.pq"
    pq.write_table(table, path)
    arrays, described = _read(path, label_column="label")
    assert described == Description(format="parquet", n_examples=15, feature_shape=(3,),
                                    target_kind="classes", n_classes=4, n_outputs=4,
                                    splits={"all": 15})
    _assert_features(arrays.x_train, (15, 3))
    assert arrays.x_train[2].tolist() == [np.float32(2 / 14), 2.0, 1.0]
    assert arrays.y_train.dtype == np.int32


def test_task_values_on_integer_labels(tmp_path: Path) -> None:
    path = _savez(tmp_path / "counts.npz", x=np.ones((12, 2)), y=_labels(12, 4))
    arrays, described = _read(path, task="values")
    assert (described.target_kind, described.n_classes, described.n_outputs) == ("values", None, 1)
    assert arrays.y_train.dtype == np.float32
    assert arrays.y_train[:, 0].tolist() == [float(v) for v in _labels(12, 4)]


def test_task_classes_on_whole_floats(tmp_path: Path) -> None:
    path = _savez(tmp_path / "f.npz", x=np.ones((12, 2)), y=_labels(12, 3).astype(np.float64))
    arrays, described = _read(path, task="classes")
    assert (described.target_kind, described.n_classes) == ("classes", 3)
    assert arrays.y_train.dtype == np.int32
    assert arrays.y_train.tolist() == _labels(12, 3).tolist()


@pytest.mark.parametrize(("filename", "fmt"), [
    ("a.npz", "npz"), ("DATA.NPZ", "npz"), ("x.csv", "csv"), ("t.Parquet", "parquet"),
    ("t.pq", "parquet"), ("dir/sub.v2.csv", "csv"),
])
def test_format_of(filename: str, fmt: str) -> None:
    assert format_of(filename) == fmt


# --- bad files ---------------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls os.mkdir(marker): proof of code from the file being run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _pickled_npz(tmp_path: Path) -> Path:
    x = np.zeros((12, 1), dtype=object)
    x[0, 0] = _Payload(tmp_path / "pwned")
    return _savez(tmp_path / "evil.npz", x=x, y=_labels(12, 2))


def _bomb(tmp_path: Path) -> Path:
    # 8 MB of zeros deflates to a few KB: only the declared size gives it away.
    return _zip(tmp_path / "bomb.npz", {"x.npy": _npy_bytes(np.zeros((100_000, 10))),
                                        "y.npy": _npy_bytes(_labels(100_000, 2))},
                zipfile.ZIP_DEFLATED)


def _cut(path: Path) -> Path:
    """The first half of the file, as an interrupted upload leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _lying_header(tmp_path: Path) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (1000, 3)})
    x = header.getvalue() + np.ones((12, 3)).tobytes()
    return _zip(tmp_path / "lying.npz", {"x.npy": x, "y.npy": _npy_bytes(_labels(12, 2))})


def _encrypted(tmp_path: Path) -> Path:
    path = _zip(tmp_path / "enc.npz", {"x.npy": _npy_bytes(np.ones((12, 2))),
                                       "y.npy": _npy_bytes(_labels(12, 2))})
    # Set the "encrypted" flag in the central directory entry of the first member.
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x1
    path.write_bytes(bytes(data))
    return path


def _corrupt_data(tmp_path: Path) -> Path:
    """Headers intact, x's compressed data damaged near its end."""
    x = np.random.default_rng(2).normal(size=(12, 200))
    members = {"x.npy": _npy_bytes(x), "y.npy": _npy_bytes(_labels(12, 2))}
    path = _zip(tmp_path / "bad.npz", members, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("x.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + info.compress_size - 200, start + info.compress_size - 100):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _polyglot(path: Path) -> Path:
    """An .npy that zipfile also reads as a zip (it finds the directory at the end)."""
    archive = _zip(path.with_suffix(".zip"), {"x.npy": _npy_bytes(np.ones((12, 2))),
                                              "y.npy": _npy_bytes(_labels(12, 2))})
    path.write_bytes(_npy_bytes(np.ones((12, 2))) + archive.read_bytes())
    assert zipfile.is_zipfile(path)
    return path


def _parquet(path: Path, **columns: Any) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _xy(name: str, x: Any, y: Any) -> Callable[[Path], Path]:
    return lambda tmp: _savez(tmp / name, x=x, y=y)


def _nan_x() -> np.ndarray:
    x = np.ones((12, 3))
    x[0, 0] = x[5, 2] = np.nan
    return x


def _inf_y() -> np.ndarray:
    y = np.ones(12)
    y[3] = -np.inf
    return y


@dataclass(frozen=True)
class Bad:
    build: Callable[[Path], Path]
    says: tuple[str, ...]  # each must appear in the message (case-insensitive)
    status: int = 422
    field: str = "file"
    label_column: str | None = None
    task: Any = None
    limits: Limits = LIMITS


FEATURES = ["a,b,label", "1,2,0", "3,4,1"]

BAD: dict[str, Bad] = {
    "unsupported-extension": Bad(lambda tmp: _csv(tmp / "data.xlsx", "a,b\n1,2\n"),
                                 ("'.xlsx'", ".npz", ".csv", ".parquet"), status=415),
    "no-extension": Bad(lambda tmp: _csv(tmp / "data", "a\n"), ("no extension",), status=415),
    "npz-not-zip": Bad(lambda tmp: _csv(tmp / "x.npz", "just text\n"),
                       ("not an .npz (zip) archive",)),
    "npy-with-zip-appended": Bad(
        lambda tmp: _polyglot(tmp / "p.npz"), ("not an .npz (zip) archive",)),
    "csv-header-only": Bad(lambda tmp: _csv(tmp / "h.csv", "a,b,label\n"), ("no data rows",),
                           label_column="label"),
    "csv-binary": Bad(lambda tmp: _zip(tmp / "data.csv", {"x.npy": _npy_bytes(np.ones(3))}),
                      ("binary", "csv"), label_column="label"),
    "parquet-not-parquet": Bad(lambda tmp: _csv(tmp / "t.parquet", "a,b\n1,2\n"),
                               ("not a parquet file",), label_column="b"),
    "parquet-garbage-footer": Bad(
        lambda tmp: _bytes(tmp / "g.parquet", b"PAR1" + bytes(40) + b"PAR1"),
        ("could not read the parquet file",), label_column="b"),
    "parquet-bomb": Bad(
        lambda tmp: _parquet(tmp / "big.parquet", a=np.zeros(300_000), b=_labels(300_000, 2)),
        ("parquet file would inflate", "limit of 1,000,000"), status=413, label_column="b",
        limits=Limits(max_inflated_bytes=1_000_000, max_classes=20)),
    "parquet-text-feature": Bad(
        lambda tmp: _parquet(tmp / "s.parquet", name=np.array(["x" * 1000] * 12),
                             label=_labels(12, 2)),
        ("column 'name' has type string",), label_column="label"),
    "csv-ragged-rows": Bad(
        lambda tmp: _table_csv(tmp / "r.csv", "a,b,label", ["1,2,0", "3,1"] * 6),
        ("could not parse the csv file", "expected 3 columns"), label_column="label"),
    "parquet-truncated": Bad(
        lambda tmp: _cut(_parquet(tmp / "t.parquet", a=np.ones(20), b=_labels(20, 2))),
        ("truncated",), label_column="b"),
    "pickled-object": Bad(_pickled_npz, ("numeric", "x has dtype object")),
    "structured-dtype": Bad(
        _xy("s.npz", np.zeros(12, dtype=[("a", "<f4"), ("b", "<i4")]), _labels(12, 2)),
        ("numeric", "structured", "a, b")),
    "string-dtype": Bad(_xy("u.npz", np.full((12, 2), "text"), _labels(12, 2)),
                        ("numeric", "x has a string dtype")),
    "complex-dtype": Bad(_xy("c.npz", np.ones((12, 2), dtype=complex), _labels(12, 2)),
                         ("numeric", "complex")),
    "nan-in-x": Bad(_xy("n.npz", _nan_x(), _labels(12, 2)), ("x contains 2 nan",)),
    "inf-in-y": Bad(_xy("i.npz", np.ones((12, 2)), _inf_y()), ("y contains 1 infinite",)),
    "float32-overflow": Bad(_xy("o.npz", np.full((12, 2), 1e300), _labels(12, 2)),
                            ("x contains 24 infinite", "float32")),
    "length-mismatch": Bad(_xy("l.npz", np.ones((12, 2)), _labels(11, 2)),
                           ("x has 12 examples", "y has 11")),
    "nine-examples": Bad(_xy("9.npz", np.ones((9, 2)), _labels(9, 2)),
                         ("only 9 examples", "at least 10")),
    "labels-without-0": Bad(_xy("l.npz", np.ones((12, 2)), _labels(12, 3) + 1),
                            ("0..3", "missing labels: 0")),
    "labels-gap": Bad(_xy("g.npz", np.ones((12, 2)), np.array([0, 1, 3] * 4)),
                      ("missing labels: 2",)),
    "negative-labels": Bad(_xy("neg.npz", np.ones((12, 2)), _labels(12, 3) - 1),
                           ("negative", "-1")),
    "too-many-classes": Bad(_xy("k.npz", np.ones((30, 2)), _labels(30, 25)),
                            ("25 classes", "at most 20")),
    "one-class": Bad(_xy("one.npz", np.ones((12, 2)), np.zeros(12, dtype=int)),
                     ("at least 2 classes",)),
    "one-hot": Bad(_xy("oh.npz", np.ones((12, 2)), np.eye(3, dtype=int)[_labels(12, 3)]),
                   ("one-hot", "(12, 3)")),
    "y-3d": Bad(_xy("y3.npz", np.ones((12, 2)), np.ones((12, 2, 2))),
                ("y must be 1-d (n,) or 2-d", "(12, 2, 2)")),
    "y-scalar": Bad(_xy("y0.npz", np.ones((12, 2)), np.int64(1)), ("y must be 1-d", "()")),
    "corrupt-npz-data": Bad(_corrupt_data, ("could not read the .npz archive",)),
    "x-1d": Bad(_xy("x1.npz", np.ones(12), _labels(12, 2)), ("x must be at least 2-d", "(12,)")),
    "x-empty": Bad(_xy("e.npz", np.ones((0, 3)), _labels(0, 2)), ("x is empty",)),
    "label-column-missing": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "a,b,label", ["1,2,0"] * 12),
        ("'target' not found", "'a', 'b', 'label'"), field="label_column",
        label_column="target"),
    "csv-without-header": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "1,2,0", ["1,2,0"] * 12),
        ("not found", "header"), field="label_column", label_column="label"),
    "label-column-none": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "a,b,label", ["1,2,0"] * 12),
        ("label_column is required",), field="label_column"),
    "csv-text-feature": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "a,color,label",
                               [f"1,{c},{i % 2}" for i, c in enumerate(["red", "blue"] * 6)]),
        ("numeric", "column 'color'", "string"), label_column="label"),
    "csv-text-label": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "a,b,kind", ["1,2,cat", "3,4,dog"] * 6),
        ("label column 'kind' has type string",), field="label_column", label_column="kind"),
    "csv-nulls": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "a,b,label", ["1,2,0", "3,,1"] * 6),
        ("column 'b' has 6 missing",), label_column="label"),
    "csv-only-label": Bad(
        lambda tmp: _table_csv(tmp / "d.csv", "label", ["0", "1"] * 6),
        ("no feature columns",), label_column="label"),
    "parquet-nan-feature": Bad(
        lambda tmp: _parquet(tmp / "t.parquet", a=np.array([1.0, np.nan] * 6),
                             label=_labels(12, 2)),
        ("column 'a' contains 6 nan",), label_column="label"),
    "zip-bomb": Bad(_bomb, ("inflate to 8,800,256 bytes", "limit of 4,000,000"), status=413),
    "unexpected-member": Bad(
        lambda tmp: _savez(tmp / "z.npz", x=np.ones((12, 2)), y=_labels(12, 2), z=np.ones(3)),
        ("unexpected: 'z.npy'",)),
    "path-traversal": Bad(
        lambda tmp: _zip(tmp / "t.npz", {"../x.npy": _npy_bytes(np.ones((12, 2))),
                                         "y.npy": _npy_bytes(_labels(12, 2))}),
        ("unsafe member name '../x.npy'",)),
    "directory-member": Bad(
        lambda tmp: _zip(tmp / "d.npz", {"x.npy": _npy_bytes(np.ones((12, 2))),
                                         "y.npy": _npy_bytes(_labels(12, 2)), "data/": b""}),
        ("unsafe member name 'data/'",)),
    "encrypted-member": Bad(_encrypted, ("encrypted",)),
    "truncated-npz": Bad(
        lambda tmp: _cut(_savez(tmp / "cut.npz", x=np.ones((50, 4)), y=_labels(50, 2))),
        ("truncated",)),
    "lying-npy-header": Bad(_lying_header, ("(1000, 3)", "truncated or corrupt")),
    "own-split-missing-y_val": Bad(
        lambda tmp: _savez(tmp / "s.npz", x_train=np.ones((12, 2)), y_train=_labels(12, 2),
                           x_val=np.ones((3, 2))),
        ("missing: y_val",)),
    "own-split-feature-mismatch": Bad(
        lambda tmp: _savez(tmp / "s.npz", x_train=np.ones((12, 2)), y_train=_labels(12, 2),
                           x_val=np.ones((3, 4)), y_val=_labels(3, 2)),
        ("x_train and x_val must have the same shape",)),
    "own-split-empty-validation": Bad(
        lambda tmp: _savez(tmp / "s.npz", x_train=np.ones((12, 2)), y_train=_labels(12, 2),
                           x_val=np.ones((0, 2)), y_val=_labels(0, 2)),
        ("x_val is empty",)),
    "own-split-small-train": Bad(
        lambda tmp: _savez(tmp / "s.npz", x_train=np.ones((8, 2)), y_train=_labels(8, 2),
                           x_val=np.ones((8, 2)), y_val=_labels(8, 2)),
        ("only 8 examples in x_train",)),
    "task-classes-on-fractions": Bad(
        _xy("f.npz", np.ones((12, 2)), np.linspace(0, 1, 12)),
        ("non-integral", "task 'classes'"), field="task", task="classes"),
    "task-unknown": Bad(_xy("t.npz", np.ones((12, 2)), _labels(12, 2)),
                        ("task must be",), field="task", task="ranking"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_upload_is_refused(tmp_path: Path, case: Bad) -> None:
    path = case.build(tmp_path)
    with pytest.raises(DatasetProblem) as refused:
        _read(path, label_column=case.label_column, task=case.task, limits=case.limits)
    problem = refused.value
    assert (problem.status, problem.field) == (case.status, case.field), problem.message
    for words in case.says:
        assert words.lower() in problem.message.lower(), problem.message
    assert str(problem) == problem.message
    assert str(tmp_path) not in problem.message  # the server's paths stay private


def test_pickled_payload_is_never_run(tmp_path: Path) -> None:
    path = _pickled_npz(tmp_path)
    marker = tmp_path / "pwned"
    with pytest.raises(DatasetProblem, match="dtype object"):
        _read(path)
    assert not marker.exists()
    # The payload is live: loading the same file with pickles allowed does run it.
    with np.load(path, allow_pickle=True) as npz:
        npz["x"]
    assert marker.exists()


def test_problem_defaults() -> None:
    problem = DatasetProblem("bad")
    assert (problem.message, problem.field, problem.status) == ("bad", "file", 422)


def test_an_npz_of_many_members_is_refused_before_its_directory_is_read(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "crowded.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(5_000):
            archive.writestr(f"x{i}.npy", b"")
    with pytest.raises(DatasetProblem, match="the archive has 5,000 members; at most 64"):
        _read(path)
