"""The size of a zip archive's central directory, read from its end record alone.

``zipfile.ZipFile`` reads the whole central directory into Python objects before anything
can look at a member: a 512 MB upload of millions of empty members would cost gigabytes and
minutes there. The archives we accept hold a handful of members, so the end record's counts
are checked first.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple

_END_RECORD = struct.Struct("<4s4H2LH")
_SIGNATURE = b"PK\x05\x06"
# The end record, and a comment of at most 65535 bytes after it.
_TAIL_BYTES = _END_RECORD.size + 0xFFFF


class Directory(NamedTuple):
    """What the end record says of the central directory."""

    entries: int
    size_bytes: int


def directory_of(file: BinaryIO) -> Directory | None:
    """The central directory's entry count and size; None when there is no end record (not a
    zip: ``zipfile`` then says why)."""
    file.seek(0, 2)
    length = file.tell()
    file.seek(max(0, length - _TAIL_BYTES))
    tail = file.read()
    at = tail.rfind(_SIGNATURE)
    if at < 0 or len(tail) - at < _END_RECORD.size:
        return None
    fields = _END_RECORD.unpack_from(tail, at)
    file.seek(0)
    return Directory(entries=fields[4], size_bytes=fields[5])


def too_large(directory: Directory | None, *, max_entries: int,
              max_bytes: int = 1 << 20) -> str | None:
    """Why the directory is too large to read, or None."""
    if directory is None:
        return None
    if directory.entries > max_entries:
        return f"the archive has {directory.entries:,} members; at most {max_entries} are expected"
    if directory.size_bytes > max_bytes:
        return (f"the archive's directory takes {directory.size_bytes:,} bytes; at most "
                f"{max_bytes:,} are expected")
    return None
