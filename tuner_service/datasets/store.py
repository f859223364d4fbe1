"""Content-addressed storage of uploaded data sets' bytes, by SHA-256.

One machine keeps them as files (``FileBlobStore``); the distributed deployment keeps them in
the database in chunks (``DatabaseBlobStore``) so a worker on another host can fetch them with
no shared filesystem. Both stream: a blob of gigabytes never sits in memory.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from tuner_service.config import Settings
from tuner_service.db.models import BlobChunkModel, BlobModel, utcnow

MiB = 1 << 20
# Bytes of chunks one statement inserts, or one fetch from a server-side cursor holds.
BATCH_BYTES = 4 * MiB
# Stored blobs never change: read-only guards them (and the cache's hard links to them).
READ_ONLY = 0o444
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobMissing(Exception):
    """No stored bytes have this hash (deleted, or never stored)."""


class BlobCorrupt(Exception):
    """The stored chunks do not add up to the blob's recorded size."""


def check_sha256(sha256: str) -> str:
    """The hash itself if it is 64 lowercase hex digits; it names files, so nothing else may."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class BlobStore(Protocol):
    """Bytes by their SHA-256, written once and read by any process."""

    def put(self, sha256: str, source: Path) -> bool:
        """Store ``source``'s bytes under ``sha256`` (computed by the caller); True when stored
        now, False when they were there already (also for the loser of a concurrent put)."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether bytes are stored under ``sha256``."""
        ...

    def copy_to(self, sha256: str, dest: Path) -> None:
        """Write the bytes to ``dest`` (created or overwritten); ``BlobMissing`` if absent."""
        ...

    def delete(self, sha256: str) -> None:
        """Remove the bytes; nothing happens when there are none."""
        ...


class FileBlobStore:
    """Blobs as read-only files ``root/<sha[:2]>/<sha>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob's file is (or would be)."""
        return self.root / check_sha256(sha256)[:2] / sha256

    def put(self, sha256: str, source: Path) -> bool:
        """Copy into a temp file beside the target, then link it into place: a reader never
        sees a partial file, and ``os.link`` (unlike ``os.replace``) fails when another process
        got there first, so exactly one concurrent put returns True."""
        target = self.path(sha256)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{sha256}.", suffix=".tmp")
        os.close(fd)
        temp = Path(name)
        try:
            shutil.copyfile(source, temp)
            temp.chmod(READ_ONLY)
            return _publish(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        """Whether the blob's file is there."""
        return self.path(sha256).is_file()

    def copy_to(self, sha256: str, dest: Path) -> None:
        """Hard-link the blob to ``dest`` (no copy on one filesystem), else copy it."""
        source = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            _link_or_copy(source, dest)
        except FileNotFoundError as missing:
            raise BlobMissing(sha256) from missing

    def delete(self, sha256: str) -> None:
        """Remove the blob's file if it is there."""
        self.path(sha256).unlink(missing_ok=True)


def _publish(temp: Path, target: Path) -> bool:
    try:
        os.link(temp, target)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: atomic still, but last writer wins
        os.replace(temp, target)
    return True


def _link_or_copy(source: Path, dest: Path) -> None:
    # Link under a temp name, then replace: os.link alone cannot overwrite an existing dest.
    temp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.link")
    try:
        os.link(source, temp)
    except FileNotFoundError:  # no such blob: the caller says so
        raise
    except OSError:  # another filesystem, or hard links refused: copy instead
        shutil.copyfile(source, dest)
        return
    os.replace(temp, dest)


class DatabaseBlobStore:
    """Blobs as a ``tuner_blobs`` row and its ``tuner_blob_chunks``, committed together."""

    def __init__(self, engine: Engine, chunk_bytes: int = MiB) -> None:
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.engine = engine
        self.chunk_bytes = chunk_bytes
        self._batch = max(1, BATCH_BYTES // chunk_bytes)

    def put(self, sha256: str, source: Path) -> bool:
        """Insert the blob row first, then its chunks, in one transaction: the row claims the
        hash (a concurrent put waits on it, then fails) and readers see all or nothing."""
        check_sha256(sha256)
        size = source.stat().st_size
        try:
            with self.engine.begin() as conn, source.open("rb") as reader:
                conn.execute(insert(BlobModel).values(
                    sha256=sha256, size_bytes=size, created_at=utcnow()))
                # Chunks left by a delete that ran without foreign keys would collide.
                conn.execute(delete(BlobChunkModel).where(BlobChunkModel.sha256 == sha256))
                written = self._insert_chunks(conn, sha256, reader)
                if written != size:
                    raise OSError(f"{source} changed while it was stored")
        except IntegrityError:
            if not self.exists(sha256):  # not the blob row's key: a real error
                raise
            return False
        return True

    def _insert_chunks(self, conn: Connection, sha256: str, reader: BinaryIO) -> int:
        written = 0
        batch: list[dict[str, object]] = []
        for seq, data in enumerate(iter(lambda: reader.read(self.chunk_bytes), b"")):
            batch.append({"sha256": sha256, "seq": seq, "data": data})
            written += len(data)
            if len(batch) >= self._batch:
                conn.execute(insert(BlobChunkModel), batch)
                batch = []
        if batch:
            conn.execute(insert(BlobChunkModel), batch)
        return written

    def exists(self, sha256: str) -> bool:
        """Whether the blob row is there (its chunks commit with it)."""
        query = select(BlobModel.sha256).where(BlobModel.sha256 == check_sha256(sha256))
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def copy_to(self, sha256: str, dest: Path) -> None:
        """Stream the chunks in order into ``dest``; ``BlobCorrupt`` when they do not add up
        to the recorded size. ``dest`` is removed when the copy fails."""
        # One statement (the blob row outer-joined to its chunks) reads one snapshot, so a
        # concurrent delete shows as missing, never as a short blob; an empty blob is one row
        # with no chunk.
        query = (
            select(BlobModel.size_bytes, BlobChunkModel.seq, BlobChunkModel.data)
            .select_from(BlobModel)
            .outerjoin(BlobChunkModel, BlobChunkModel.sha256 == BlobModel.sha256)
            .where(BlobModel.sha256 == check_sha256(sha256))
            .order_by(BlobChunkModel.seq)
        )
        with self.engine.connect() as conn:
            streaming = conn.execution_options(stream_results=True, yield_per=self._batch)
            # Closed on every exit: psycopg warns of a server-side cursor left open.
            with streaming.execute(query) as result:
                rows = iter(result)
                first = next(rows, None)
                if first is None:
                    raise BlobMissing(sha256)
                chunks = itertools.chain([(first.seq, first.data)],
                                         ((row.seq, row.data) for row in rows))
                _write_file(dest, chunks, sha256, first.size_bytes)

    def delete(self, sha256: str) -> None:
        """Delete the chunks and the row in one transaction (chunks explicitly: SQLite
        cascades only where foreign keys are on)."""
        check_sha256(sha256)
        with self.engine.begin() as conn:
            conn.execute(delete(BlobChunkModel).where(BlobChunkModel.sha256 == sha256))
            conn.execute(delete(BlobModel).where(BlobModel.sha256 == sha256))


def _write_file(dest: Path, chunks: Iterable[tuple[int | None, bytes | None]], sha256: str,
                size: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dest.open("wb") as out:
            written = _write_chunks(out, chunks)
        if written != size:
            raise BlobCorrupt(f"{sha256}: {written} bytes, {size} recorded")
    except BaseException:  # no partial file where a whole one is expected
        dest.unlink(missing_ok=True)
        raise


def _write_chunks(out: BinaryIO, chunks: Iterable[tuple[int | None, bytes | None]]) -> int:
    written = 0
    for expected_seq, (seq, data) in enumerate(chunks):
        if data is None:  # the outer join's row of a blob without chunks
            break
        if seq != expected_seq:
            raise BlobCorrupt(f"chunk {expected_seq} is missing")
        out.write(data)
        written += len(data)
    return written


def make_blob_store(settings: Settings, engine: Engine) -> BlobStore:
    """The store the settings name: the database's, or files under ``dataset_folder``."""
    if settings.uses_database_store:
        return DatabaseBlobStore(engine)
    return FileBlobStore(settings.dataset_folder)
