"""A worker host's data set cache: fetch once, verify, refetch tampered files, evict LRU."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tuner_service.datasets.store import BlobMissing, FileBlobStore
from workers.dataset_cache import CorruptDataset, DatasetCache

KB = 1000


class CountingStore:
    """A real FileBlobStore that counts its fetches."""

    def __init__(self, root: Path) -> None:
        self.inner = FileBlobStore(root)
        self.fetches = 0

    def put(self, sha256: str, source: Path) -> bool:
        return self.inner.put(sha256, source)

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def copy_to(self, sha256: str, dest: Path) -> None:
        self.fetches += 1
        self.inner.copy_to(sha256, dest)

    def delete(self, sha256: str) -> None:
        self.inner.delete(sha256)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


def put(store: CountingStore, tmp_path: Path, size: int = 100 * KB) -> tuple[str, bytes]:
    """Store a random blob; its hash and bytes."""
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    source = tmp_path / f"upload-{sha}"
    source.write_bytes(data)
    store.put(sha, source)
    return sha, data


def set_mtime(path: Path, age_s: float) -> None:
    moment = time.time() - age_s
    os.utime(path, (moment, moment))


def test_fetches_once_then_serves_the_cached_file(store: CountingStore, tmp_path: Path) -> None:
    sha, data = put(store, tmp_path)
    cache = DatasetCache(tmp_path / "cache", 10 * 2**20, store)
    path = cache.path_for(sha)
    assert path == tmp_path / "cache" / sha and path.read_bytes() == data
    assert os.listdir(tmp_path / "cache") == [sha]  # no temp file left
    set_mtime(path, 600)
    assert cache.path_for(sha) == path
    assert store.fetches == 1
    assert time.time() - path.stat().st_mtime < 60  # each use touches it
    assert DatasetCache(tmp_path / "cache", 10 * 2**20, store).path_for(sha) == path
    assert store.fetches == 1  # a new process re-hashes the file, and it is fine


def test_a_tampered_file_is_fetched_again(store: CountingStore, tmp_path: Path) -> None:
    sha, data = put(store, tmp_path)
    DatasetCache(tmp_path / "cache", 10 * 2**20, store).path_for(sha)
    # Replaced, not written in place: the cached file may be a hard link to the store's.
    tampered = tmp_path / "tampered"
    tampered.write_bytes(b"not the data")
    os.replace(tampered, tmp_path / "cache" / sha)
    path = DatasetCache(tmp_path / "cache", 10 * 2**20, store).path_for(sha)
    assert path.read_bytes() == data and store.fetches == 2


def test_stored_bytes_that_do_not_match_raise_and_leave_nothing(store: CountingStore,
                                                                tmp_path: Path) -> None:
    _, data = put(store, tmp_path)
    wrong = hashlib.sha256(b"something else").hexdigest()
    source = tmp_path / "mislabelled"
    source.write_bytes(data)
    store.put(wrong, source)
    cache = DatasetCache(tmp_path / "cache", 10 * 2**20, store)
    with pytest.raises(CorruptDataset):
        cache.path_for(wrong)
    assert os.listdir(tmp_path / "cache") == []


def test_a_missing_blob_propagates(store: CountingStore, tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path / "cache", 10 * 2**20, store)
    with pytest.raises(BlobMissing):
        cache.path_for("0" * 64)
    assert os.listdir(tmp_path / "cache") == []


def test_evicts_least_recently_used_first(store: CountingStore, tmp_path: Path) -> None:
    a, b, c, d = (put(store, tmp_path)[0] for _ in range(4))
    folder = tmp_path / "cache"
    cache = DatasetCache(folder, 250 * KB, store)  # room for two blobs of 100 KB
    set_mtime(cache.path_for(a), 300)
    set_mtime(cache.path_for(b), 200)
    cache.path_for(c)  # a is the oldest
    assert sorted(os.listdir(folder)) == sorted([b, c])
    set_mtime(folder / c, 100)
    cache.path_for(b)  # a use makes b the newest, so c goes next
    cache.path_for(d)
    assert sorted(os.listdir(folder)) == sorted([b, d])
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 250 * KB


def test_eviction_keeps_the_file_just_fetched_and_fresh_temp_files(store: CountingStore,
                                                                   tmp_path: Path) -> None:
    a, b = (put(store, tmp_path)[0] for _ in range(2))
    folder = tmp_path / "cache"
    cache = DatasetCache(folder, 50 * KB, store)  # smaller than one blob
    cache.path_for(a)
    stale, fresh = folder / f".{a}.stale.part", folder / f".{a}.fresh.part"
    stale.write_bytes(b"x" * 10 * KB)
    fresh.write_bytes(b"x" * 10 * KB)
    set_mtime(stale, 7200)
    assert cache.path_for(b).is_file()
    assert sorted(os.listdir(folder)) == sorted([b, fresh.name])
