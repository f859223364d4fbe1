"""Blob stores: files, and the database's chunks on SQLite and PostgreSQL, behave the same."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tuner_service.datasets.store import (
    BlobMissing,
    BlobStore,
    DatabaseBlobStore,
    FileBlobStore,
    check_sha256,
    make_blob_store,
)
from tuner_service.db.models import BlobChunkModel
from tuner_service.runtime import Runtime

MiB = 1 << 20


@pytest.fixture(params=["files", "sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(store_kind: str) -> str:
    """Overrides conftest's: the database the database stores use (files need none)."""
    return "postgresql" if store_kind == "postgresql" else "sqlite"


@pytest.fixture
def store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    if store_kind == "files":
        return FileBlobStore(tmp_path / "blobs")
    runtime: Runtime = request.getfixturevalue("runtime")
    return DatabaseBlobStore(runtime.engine, chunk_bytes=MiB)


def stored_file(folder: Path, size: int) -> tuple[str, Path, bytes]:
    """A random file of ``size`` bytes, its hash and its bytes."""
    data = os.urandom(size)
    path = folder / f"upload-{size}"
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path, data


@pytest.fixture
def blob(tmp_path: Path) -> tuple[str, Path, bytes]:
    # Three and a half chunks: several full chunks and a short last one.
    return stored_file(tmp_path, 3 * MiB + MiB // 2)


def test_put_copy_round_trip_and_put_again(store: BlobStore, blob: tuple[str, Path, bytes],
                                           tmp_path: Path) -> None:
    sha, source, data = blob
    assert not store.exists(sha)
    assert store.put(sha, source) is True
    assert store.exists(sha)
    dest = tmp_path / "out" / "copy"
    store.copy_to(sha, dest)
    assert dest.read_bytes() == data
    # copy_to overwrites. Replace, not write in place: the file store's copy is a hard link.
    dest.unlink()
    dest.write_bytes(b"stale")
    store.copy_to(sha, dest)
    assert dest.read_bytes() == data
    assert store.put(sha, source) is False
    if isinstance(store, DatabaseBlobStore):
        with store.engine.connect() as conn:
            chunks = conn.execute(select(func.count()).select_from(BlobChunkModel)).scalar()
        assert chunks == 4


def test_empty_blob(store: BlobStore, tmp_path: Path) -> None:
    sha, source, _ = stored_file(tmp_path, 0)
    assert store.put(sha, source)
    dest = tmp_path / "empty"
    store.copy_to(sha, dest)
    assert dest.read_bytes() == b""


def test_concurrent_puts_store_once(store: BlobStore, blob: tuple[str, Path, bytes],
                                    tmp_path: Path) -> None:
    sha, source, data = blob
    barrier = threading.Barrier(2)
    results: list[bool] = []
    errors: list[BaseException] = []

    def put() -> None:
        barrier.wait()
        try:
            results.append(store.put(sha, source))
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=put) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(results) == [False, True]
    store.copy_to(sha, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


def test_delete_is_idempotent_and_then_missing(store: BlobStore, blob: tuple[str, Path, bytes],
                                               tmp_path: Path) -> None:
    sha, source, _ = blob
    store.put(sha, source)
    store.delete(sha)
    store.delete(sha)
    assert not store.exists(sha)
    dest = tmp_path / "copy"
    with pytest.raises(BlobMissing):
        store.copy_to(sha, dest)
    assert not dest.exists()
    if isinstance(store, DatabaseBlobStore):
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(BlobChunkModel)).scalar() == 0
    assert store.put(sha, source) is True  # stored again after a delete


def test_file_store_layout_and_copies_are_links(tmp_path: Path,
                                                blob: tuple[str, Path, bytes]) -> None:
    sha, source, _ = blob
    store = FileBlobStore(tmp_path / "blobs")
    store.put(sha, source)
    stored = tmp_path / "blobs" / sha[:2] / sha
    assert stored.is_file() and os.listdir(stored.parent) == [sha]  # no temp file left
    dest = tmp_path / "cache" / "copy"
    store.copy_to(sha, dest)
    assert os.path.samefile(stored, dest)  # same filesystem: linked, not copied


def test_hashes_that_are_not_hex_digests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileBlobStore(tmp_path).exists("../" + "a" * 61)
    assert check_sha256("0" * 64) == "0" * 64


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
def test_make_blob_store_follows_the_backend(runtime: Runtime, store_kind: str) -> None:
    store = make_blob_store(runtime.settings, runtime.engine)
    if store_kind == "postgresql":
        assert isinstance(store, DatabaseBlobStore) and store.engine is runtime.engine
    else:
        assert isinstance(store, FileBlobStore)
        assert store.root == runtime.settings.dataset_folder
    forced = runtime.settings.model_copy(update={"dataset_store": "database"})
    assert isinstance(make_blob_store(forced, runtime.engine), DatabaseBlobStore)
