"""Receive one file upload from a ``multipart/form-data`` body by streaming it to a temporary file.

Why not FastAPI's ``UploadFile`` or ``request.form()``: both parse the *whole* body (spooling
the file to disk) before the handler runs, so a handler cannot refuse an oversized upload until
every byte has arrived, and it cannot hash the file as it streams. Here the body is fed chunk by
chunk from ``request.stream()`` into python-multipart's streaming ``MultipartParser``: the file
part's bytes go straight to a temporary file and into a sha256, the upload is refused with 413
the moment it passes the cap (the rest of the body is never read), and the few small text
fields the route expects are kept in bounded buffers. Nothing holds the whole body in memory.

Every problem is an ``UploadProblem`` carrying the HTTP status to answer with and the form
field it concerns; the route maps it to its error response.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from tuner_service.api.bodies import BadLength, declared_length
from tuner_service.datasets.formats import DatasetProblem

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The server setting that raises the cap, named in every 413 so the operator knows what to change.
LIMIT_SETTING = "TUNER_MAX_UPLOAD_BYTES"
# Room for the multipart envelope around the file: boundaries, part headers, the text fields.
ENVELOPE_BYTES = 64 * 1024
MAX_FILENAME_CHARS = 255
# A longer "extension" is not one; truncating a long name keeps a real one (the format hint).
_MAX_EXTENSION_CHARS = 16
# Control (Cc) and format (Cf: bidi overrides, zero-width) characters: neither belongs in a name
# shown back to people, and the bidi ones can disguise an extension.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf"})


class UploadProblem(DatasetProblem):
    """Why an upload was refused before its content was looked at (the request itself): the
    HTTP status to answer with and the form field at fault."""


@dataclass(frozen=True)
class ReceivedUpload:
    """A received upload: the file part's bytes on disk plus the form's text fields."""

    path: Path
    filename: str
    size_bytes: int
    sha256: str
    fields: dict[str, str]


def too_large(max_bytes: int, setting: str = LIMIT_SETTING) -> UploadProblem:
    """The 413 for an upload over ``max_bytes``: names the limit and the setting raising it."""
    return UploadProblem(
        f"the uploaded file is larger than the limit of {max_bytes} bytes "
        f"(the server's {setting} setting raises it)", status=413)


def clean_filename(raw: bytes | None) -> str:
    """The client's file name as a base name: no directories, no control characters, capped.

    ``raw`` is the Content-Disposition ``filename`` parameter's bytes (browsers send UTF-8).
    The name is for display only; the bytes are stored under a name of our own choosing.
    """
    if not raw:
        return ""
    text = raw.decode("utf-8", errors="replace")
    # Both separators: a Windows client may send "C:\\data\\x.npz", anyone may send "../../x".
    base = re.split(r"[/\\]", text)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch) not in _UNPRINTABLE_CATEGORIES)
    base = base.strip()
    if base in {".", ".."}:
        return ""
    if len(base) <= MAX_FILENAME_CHARS:
        return base
    stem, dot, extension = base.rpartition(".")
    if dot and stem and len(extension) <= _MAX_EXTENSION_CHARS:
        return stem[: MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
    return base[:MAX_FILENAME_CHARS]


def _boundary(content_type: str | None, file_field: str) -> bytes:
    """The multipart boundary from the Content-Type header; 415 unless multipart/form-data."""
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if media_type != b"multipart/form-data" or not boundary:
        shown = content_type if content_type else "none"
        raise UploadProblem(
            f"send the upload as multipart/form-data with the file in a part named "
            f"'{file_field}' (the request's Content-Type was {shown})", status=415)
    return boundary


def _check_declared_length(request: Request, body_limit: int, max_bytes: int,
                           setting: str) -> None:
    """Refuse by Content-Length alone, before reading a byte, when the body cannot fit (none
    given: chunked, the limit is enforced while the body streams)."""
    try:
        declared = declared_length(request.headers)
    except BadLength:
        raise UploadProblem("Content-Length must be one non-negative integer",
                            status=400) from None
    if declared is not None and declared > body_limit:
        raise too_large(max_bytes, setting)


class _Receiver:
    """The parser's callbacks: route each part's bytes to the temporary file or a text field.

    Callbacks raise ``UploadProblem`` straight out of ``MultipartParser.write``, which stops
    the parse (and the reading of the body) at the first byte that breaks a rule.
    """

    def __init__(self, sink: BinaryIO, *, max_bytes: int, limit_setting: str, file_field: str,
                 text_fields: frozenset[str], max_field_bytes: int) -> None:
        self._sink = sink
        self._max_bytes = max_bytes
        self.limit_setting = limit_setting
        self._file_field = file_field
        self._text_fields = text_fields
        self._max_field_bytes = max_field_bytes
        self._hash = hashlib.sha256()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._part: str | None = None  # the current part's field name, once its headers end
        self._in_file = False
        self._field_value = bytearray()
        self._seen: set[str] = set()
        self.file_seen = False
        self.filename = ""
        self.size_bytes = 0
        self.fields: dict[str, str] = {}
        self.ended = False

    def callbacks(self) -> MultipartCallbacks:
        """The callback table for ``MultipartParser``."""
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    @property
    def sha256(self) -> str:
        """The hex sha256 of the file part's bytes so far."""
        return self._hash.hexdigest()

    def _on_part_begin(self) -> None:
        self._disposition = None
        self._part = None
        self._in_file = False
        self._field_value.clear()
        self._header_name.clear()
        self._header_value.clear()

    # Header names and values may arrive split across chunks; the parser caps each header line
    # (and the number of headers per part), so these buffers stay small.
    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if disposition != b"form-data" or raw_name is None:
            raise UploadProblem(
                "malformed multipart body: every part needs a "
                "'Content-Disposition: form-data; name=\"...\"' header", status=400)
        name = raw_name.decode("utf-8", errors="replace")
        if name == self._file_field:
            if self.file_seen:
                raise UploadProblem(f"send one file: the form has more than one '{name}' part",
                                    field=name)
            self.file_seen = True
            self._in_file = True
            self.filename = clean_filename(options.get(b"filename"))
        elif name not in self._text_fields:
            expected = ", ".join(repr(field) for field in sorted(self._text_fields |
                                                                 {self._file_field}))
            raise UploadProblem(f"unknown form field {name!r}; expected one of {expected}",
                                field=name)
        elif b"filename" in options:
            # Only one file per upload: a second file under a text field's name is refused
            # rather than read into memory as text.
            raise UploadProblem(f"form field {name!r} must be plain text, not a file; send one "
                                f"file, in the '{self._file_field}' part", field=name)
        elif name in self._seen:
            raise UploadProblem(f"form field {name!r} is given more than once", field=name)
        self._seen.add(name)
        self._part = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size_bytes += end - start
            if self.size_bytes > self._max_bytes:
                raise too_large(self._max_bytes, self.limit_setting)
            chunk = memoryview(data)[start:end]  # no copy of the parser's buffer
            self._hash.update(chunk)
            self._sink.write(chunk)
        elif self._part is not None:
            if len(self._field_value) + (end - start) > self._max_field_bytes:
                raise UploadProblem(f"form field {self._part!r} is longer than "
                                    f"{self._max_field_bytes} bytes", field=self._part)
            self._field_value += data[start:end]

    def _on_part_end(self) -> None:
        if self._in_file or self._part is None:
            return
        name = self._part
        try:
            text = self._field_value.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadProblem(f"form field {name!r} is not valid UTF-8", field=name) from None
        if "\x00" in text:
            raise UploadProblem(f"form field {name!r} contains a NUL character", field=name)
        self.fields[name] = text

    def _on_end(self) -> None:
        self.ended = True


async def _feed(request: Request, boundary: bytes, receiver: _Receiver, *,
                body_limit: int, max_bytes: int) -> None:
    """Stream the body into a parser, chunk by chunk, until its closing boundary."""
    received = 0
    try:
        # The parser's defaults bound each part's header section: 8 headers of 4 KiB or so.
        parser = MultipartParser(boundary, receiver.callbacks())
        async for chunk in request.stream():
            received += len(chunk)
            # A chunked body has no Content-Length to check up front, and the parser skips a
            # preamble of any length: cap the whole body, not only the file part.
            if received > body_limit:
                raise too_large(max_bytes, receiver.limit_setting)
            if not receiver.ended:  # the epilogue after the closing boundary is ignored
                parser.write(chunk)
    except ClientDisconnect:
        raise UploadProblem("the client disconnected before the upload finished",
                            status=400) from None
    except FormParserError as error:
        raise UploadProblem(f"malformed multipart body: {error}", status=400) from None
    if not receiver.ended:
        raise UploadProblem("malformed multipart body: it ended before the closing boundary "
                            "(was the upload cut short?)", status=400)


@asynccontextmanager
async def receive_upload(request: Request, *, max_bytes: int, tmp_dir: Path,
                         limit_setting: str = LIMIT_SETTING,
                         file_field: str = "file", text_fields: frozenset[str],
                         max_field_bytes: int = 4096) -> AsyncIterator[ReceivedUpload]:
    """Stream a multipart/form-data upload's one file part into a temporary file.

    Yields the ``ReceivedUpload``; its temporary file (in ``tmp_dir``, created if missing) is
    deleted when the block exits, however it exits, so keep the bytes by moving or copying
    them inside the block. The file part is named ``file_field`` and may hold at most
    ``max_bytes`` bytes; the other parts must be named in ``text_fields``, appear at most once
    and hold at most ``max_field_bytes`` bytes of UTF-8 each. Raises ``UploadProblem``.
    """
    boundary = _boundary(request.headers.get("content-type"), file_field)
    body_limit = max_bytes + ENVELOPE_BYTES
    _check_declared_length(request, body_limit, max_bytes, limit_setting)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            receiver = _Receiver(sink, max_bytes=max_bytes, limit_setting=limit_setting,
                                 file_field=file_field,
                                 text_fields=text_fields, max_field_bytes=max_field_bytes)
            await _feed(request, boundary, receiver, body_limit=body_limit, max_bytes=max_bytes)
        if not receiver.file_seen:
            raise UploadProblem(f"the form is missing the file part '{file_field}'",
                                field=file_field)
        yield ReceivedUpload(path=path, filename=receiver.filename,
                             size_bytes=receiver.size_bytes, sha256=receiver.sha256,
                             fields=dict(receiver.fields))
    finally:
        path.unlink(missing_ok=True)
