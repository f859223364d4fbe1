"""A worker host's bounded disk cache of data set files, by SHA-256.

Several worker processes on one host share the folder: a file appears only whole (fetched into
a temp file, verified, then renamed into place), and the least recently used files (oldest
mtime; every use touches it) are removed once the folder grows past its limit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from tuner_service.datasets.store import BlobStore, check_sha256

HASH_BLOCK = 1 << 20
# A temp file younger than this may be a fetch in progress in another process.
STALE_TEMP_S = 3600.0
TEMP_PREFIX = "."


class CorruptDataset(Exception):
    """The store's bytes do not have the hash they are stored under."""


def file_sha256(path: Path) -> str:
    """The file's SHA-256 hex digest, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while block := reader.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class DatasetCache:
    """Local copies of stored blobs in ``folder``, at most about ``max_bytes`` in all."""

    def __init__(self, folder: Path, max_bytes: int, store: BlobStore) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.store = store
        # Hashes whose local file this process has checked: each is re-hashed once per
        # process, not on every use.
        self._verified: set[str] = set()

    def path_for(self, sha256: str) -> Path:
        """The local file holding the blob, fetched from the store when it is not cached.

        Raises ``BlobMissing`` when the store has no such blob and ``CorruptDataset`` when
        its bytes do not match the hash.
        """
        path = self.folder / check_sha256(sha256)
        if self._cached(sha256, path):
            return path
        self._fetch(sha256, path)
        self._verified.add(sha256)
        self._evict(keep=path)
        return path

    def _cached(self, sha256: str, path: Path) -> bool:
        try:
            # Touch first: the file is then the newest, so no other process evicts it next.
            os.utime(path)
            if sha256 not in self._verified and file_sha256(path) != sha256:
                path.unlink(missing_ok=True)
                return False
        except FileNotFoundError:  # never fetched, or evicted by another process
            return False
        self._verified.add(sha256)
        return True

    def _fetch(self, sha256: str, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=f"{TEMP_PREFIX}{sha256}.",
                                    suffix=".part")
        os.close(fd)
        temp = Path(name)
        try:
            self.store.copy_to(sha256, temp)
            actual = file_sha256(temp)
            if actual != sha256:
                raise CorruptDataset(f"stored bytes of {sha256} hash to {actual}")
            # A store may hard-link its file, whose mtime is when it was stored, not now.
            os.utime(temp)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used files until the folder fits ``max_bytes``, and
        temp files old enough to be left over from a process that died."""
        now = time.time()
        files: list[tuple[float, int, Path]] = []
        for entry in os.scandir(self.folder):
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            if entry.name.startswith(TEMP_PREFIX):
                if now - info.st_mtime > STALE_TEMP_S:
                    Path(entry.path).unlink(missing_ok=True)
            else:
                files.append((info.st_mtime, info.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
