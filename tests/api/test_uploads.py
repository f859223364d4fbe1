"""Streaming multipart uploads (tuner_service.api.uploads) through a tiny real FastAPI app."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2  # what Starlette's TestClient is built on
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from tests.conftest import serve
from tuner_service.api.uploads import ENVELOPE_BYTES, UploadProblem, receive_upload

MiB = 2**20
MAX_BYTES = 1 * MiB
TEXT_FIELDS = frozenset({"note", "kind"})
BOUNDARY = "test-boundary-7d1f"


def make_app(tmp_dir: Path, *, max_bytes: int = MAX_BYTES) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(UploadProblem)
    async def upload_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UploadProblem)
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, Any]:
        async with receive_upload(request, max_bytes=max_bytes, tmp_dir=tmp_dir,
                                  text_fields=TEXT_FIELDS) as received:
            return {
                "filename": received.filename,
                "size_bytes": received.size_bytes,
                "sha256": received.sha256,
                "fields": received.fields,
                "path_exists_inside": received.path.exists(),
                "path_inside_tmp_dir": received.path.parent == tmp_dir,
                "disk_sha256": hashlib.sha256(received.path.read_bytes()).hexdigest(),
            }

    @app.post("/upload-then-fail")
    async def upload_then_fail(request: Request) -> None:
        async with receive_upload(request, max_bytes=max_bytes, tmp_dir=tmp_dir,
                                  text_fields=TEXT_FIELDS):
            raise RuntimeError("the handler failed after the upload arrived")

    return app


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads" / "tmp"  # missing on purpose: receive_upload creates it


@pytest.fixture
def client(tmp_dir: Path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_dir)) as test_client:
        yield test_client


def leftovers(tmp_dir: Path) -> list[Path]:
    return list(tmp_dir.iterdir()) if tmp_dir.exists() else []


def multipart(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    """A multipart/form-data body: (name, filename or None, bytes) per part."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                 + data + b"\r\n")
    if close:
        body += f"--{BOUNDARY}--\r\n".encode()
    return body


def post_raw(client: TestClient, body: bytes, **headers: str) -> httpx2.Response:
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", **headers}
    return client.post("/upload", content=body, headers=headers)


def problem(response: httpx2.Response, status: int, field: str = "file") -> str:
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["field"] == field
    return str(payload["detail"])


# --- the normal path ------------------------------------------------------------------------


def test_upload_streams_to_a_temp_file_with_hash_size_and_fields(client: TestClient,
                                                                 tmp_dir: Path) -> None:
    data = bytes(range(256)) * 1000
    response = client.post("/upload", files={"file": ("weights.npz", data)},
                           data={"note": "héllo wörld", "kind": "classification"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "filename": "weights.npz",
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "fields": {"note": "héllo wörld", "kind": "classification"},
        "path_exists_inside": True,
        "path_inside_tmp_dir": True,
        "disk_sha256": hashlib.sha256(data).hexdigest(),
    }
    assert leftovers(tmp_dir) == []


def test_an_empty_file_is_received(client: TestClient, tmp_dir: Path) -> None:
    response = client.post("/upload", files={"file": ("empty.csv", b"")})
    assert response.status_code == 200, response.text
    assert response.json()["size_bytes"] == 0
    assert response.json()["sha256"] == hashlib.sha256(b"").hexdigest()
    assert response.json()["fields"] == {}
    assert leftovers(tmp_dir) == []


def test_a_file_of_exactly_max_bytes_is_accepted(client: TestClient, tmp_dir: Path) -> None:
    data = b"\r\n--" * (MAX_BYTES // 4)  # boundary look-alikes split across chunks
    response = client.post("/upload", files={"file": ("edge.bin", data)})
    assert response.status_code == 200, response.text
    assert response.json()["size_bytes"] == MAX_BYTES
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("sent", "kept"), [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\data.npz", "data.npz"),
    ("dir\\sub/mixed.csv", "mixed.csv"),
    ("bad\x01na\u202eme.csv", "badname.csv"),
    ("..", ""),
    ("x" * 300 + ".npz", "x" * 251 + ".npz"),
])
def test_the_filename_is_a_clean_base_name(client: TestClient, sent: str, kept: str) -> None:
    response = post_raw(client, multipart(("file", sent, b"abc")))
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == kept


def test_a_file_part_without_a_filename_has_an_empty_name(client: TestClient) -> None:
    response = post_raw(client, multipart(("file", None, b"abc")))
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == ""
    assert response.json()["size_bytes"] == 3


def test_the_temp_file_is_deleted_when_the_handler_fails(client: TestClient,
                                                         tmp_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="handler failed"):
        client.post("/upload-then-fail", files={"file": ("a.csv", b"1,2\n")})
    assert tmp_dir.is_dir()
    assert leftovers(tmp_dir) == []


# --- size limits -------------------------------------------------------------------------------


def test_a_3_mb_upload_over_a_1_mb_cap_is_413(client: TestClient, tmp_dir: Path) -> None:
    response = client.post("/upload", files={"file": ("big.bin", b"\0" * (3 * MiB))})
    detail = problem(response, 413)
    assert str(MAX_BYTES) in detail and "TUNER_MAX_UPLOAD_BYTES" in detail
    assert leftovers(tmp_dir) == []


def test_a_file_just_over_the_cap_is_413_while_streaming(client: TestClient,
                                                         tmp_dir: Path) -> None:
    # The body fits the Content-Length allowance, so the cap is hit in the file part itself.
    response = client.post("/upload", files={"file": ("big.bin", b"x" * (MAX_BYTES + 1))})
    assert "TUNER_MAX_UPLOAD_BYTES" in problem(response, 413)
    assert leftovers(tmp_dir) == []


def test_a_too_large_content_length_is_413_before_the_body_is_read(client: TestClient,
                                                                   tmp_dir: Path) -> None:
    declared = MAX_BYTES + ENVELOPE_BYTES + 1
    response = post_raw(client, multipart(("file", "a.bin", b"abc")),
                        **{"content-length": str(declared)})
    assert str(MAX_BYTES) in problem(response, 413)
    assert not tmp_dir.exists()  # refused before even a temp file was made


def test_a_content_length_that_is_not_a_number_is_400(client: TestClient) -> None:
    response = post_raw(client, multipart(("file", "a.bin", b"abc")),
                        **{"content-length": "12abc"})
    problem(response, 400)


# Driving the ASGI app directly shows how much of the body was read before the answer.


def run_asgi(app: FastAPI, headers: dict[str, str], chunks: list[bytes],
             disconnect_after: int | None = None) -> tuple[int, dict[str, Any], int]:
    """POST ``chunks`` to /upload; (status, JSON body, how many chunks the app pulled)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if disconnect_after is not None and pulled >= disconnect_after:
            return {"type": "http.disconnect"}
        pulled += 1
        more = pulled < len(chunks)
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/upload", "raw_path": b"/upload", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def chunked(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def test_a_chunked_upload_over_the_cap_stops_reading_at_the_cap(tmp_dir: Path) -> None:
    chunks = chunked(multipart(("file", "big.bin", b"\xab" * (3 * MiB))))
    status, body, pulled = run_asgi(
        make_app(tmp_dir), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        chunks)
    assert status == 413 and body["field"] == "file"
    assert "TUNER_MAX_UPLOAD_BYTES" in body["detail"]
    assert pulled <= MAX_BYTES // (64 * 1024) + 2 < len(chunks)
    assert leftovers(tmp_dir) == []


def test_a_declared_length_over_the_cap_reads_nothing(tmp_dir: Path) -> None:
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}",
               "content-length": str(3 * MiB)}
    status, _, pulled = run_asgi(make_app(tmp_dir), headers, [b"x" * 1024])
    assert (status, pulled) == (413, 0)


def test_a_huge_preamble_counts_against_the_cap(tmp_dir: Path) -> None:
    # The parser skips anything after a leading newline until a "-": padding without one, in
    # chunks that each start with a newline, would otherwise be read forever.
    padding = [b"\r\n" + b"p" * (64 * 1024 - 2)] * 32
    status, body_json, pulled = run_asgi(
        make_app(tmp_dir), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        [*padding, multipart(("file", "a.bin", b"abc"))])
    assert status == 413, body_json
    assert pulled == (MAX_BYTES + ENVELOPE_BYTES) // (64 * 1024) + 1
    assert leftovers(tmp_dir) == []


def test_a_client_disconnect_mid_upload_is_400(tmp_dir: Path) -> None:
    chunks = chunked(multipart(("file", "a.bin", b"z" * (512 * 1024))))
    status, body, _ = run_asgi(
        make_app(tmp_dir), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        chunks, disconnect_after=2)
    assert status == 400 and "disconnected" in body["detail"]
    assert leftovers(tmp_dir) == []


# --- refused requests ------------------------------------------------------------------------


def test_a_body_that_is_not_multipart_is_415(client: TestClient, tmp_dir: Path) -> None:
    detail = problem(client.post("/upload", json={"file": "abc"}), 415)
    assert "multipart/form-data" in detail and "'file'" in detail
    assert not tmp_dir.exists()


def test_multipart_without_a_boundary_is_415(client: TestClient) -> None:
    response = client.post("/upload", content=b"abc",
                           headers={"content-type": "multipart/form-data"})
    problem(response, 415)


def test_a_form_without_the_file_part_is_422(client: TestClient, tmp_dir: Path) -> None:
    # httpx sends data= alone as urlencoded; a file under a known text name forces multipart.
    response = post_raw(client, multipart(("note", None, b"hello")))
    assert "missing the file part" in problem(response, 422)
    assert leftovers(tmp_dir) == []


def test_two_files_are_422(client: TestClient, tmp_dir: Path) -> None:
    response = client.post("/upload", files=[("file", ("a.csv", b"1")), ("file", ("b.csv", b"2"))])
    assert "more than one" in problem(response, 422)
    assert leftovers(tmp_dir) == []


def test_a_second_file_under_a_text_field_name_is_422(client: TestClient) -> None:
    response = client.post("/upload", files=[("file", ("a.csv", b"1")), ("note", ("n", b"2"))])
    assert "not a file" in problem(response, 422, field="note")


def test_an_unknown_field_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/upload", files={"file": ("a.csv", b"1")}, data={"colour": "red"})
    detail = problem(response, 422, field="colour")
    assert "unknown form field 'colour'" in detail
    assert "'file'" in detail and "'kind'" in detail and "'note'" in detail


def test_an_oversized_text_field_is_422(client: TestClient, tmp_dir: Path) -> None:
    response = client.post("/upload", files={"file": ("a.csv", b"1")},
                           data={"note": "n" * 4097})
    assert "4096 bytes" in problem(response, 422, field="note")
    assert leftovers(tmp_dir) == []


def test_a_repeated_text_field_is_422(client: TestClient) -> None:
    response = client.post("/upload", files={"file": ("a.csv", b"1")},
                           data={"kind": ["a", "b"]})
    assert "more than once" in problem(response, 422, field="kind")


@pytest.mark.parametrize(("value", "complaint"), [
    (b"caf\xe9", "not valid UTF-8"),
    (b"a\x00b", "NUL"),
])
def test_a_text_field_must_be_utf8_without_nul(client: TestClient, value: bytes,
                                               complaint: str) -> None:
    response = post_raw(client, multipart(("note", None, value), ("file", "a.csv", b"1")))
    assert complaint in problem(response, 422, field="note")


def test_a_truncated_body_is_400(client: TestClient, tmp_dir: Path) -> None:
    whole = multipart(("note", None, b"hi"), ("file", "a.bin", b"q" * 100_000))
    cut = whole[: len(whole) - 5_000]  # inside the file's bytes: no closing boundary
    detail = problem(post_raw(client, cut), 400)
    assert "ended before the closing boundary" in detail
    assert leftovers(tmp_dir) == []


def test_a_body_missing_only_the_closing_boundary_is_400(client: TestClient) -> None:
    response = post_raw(client, multipart(("file", "a.bin", b"abc"), close=False))
    problem(response, 400)


@pytest.mark.parametrize("body", [
    b"this is not a multipart body at all",
    f"--{BOUNDARY}\r\nno colon here\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
    f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
    f"--{BOUNDARY}\r\n".encode() + b"X-Pad: y\r\n" * 9 + f"\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
    f"--{BOUNDARY}\r\nX-Long: {'v' * 10_000}\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
])
def test_a_malformed_body_is_400(client: TestClient, tmp_dir: Path, body: bytes) -> None:
    assert problem(post_raw(client, body), 400).startswith("malformed multipart body")
    assert leftovers(tmp_dir) == []


# --- a real server -------------------------------------------------------------------------


def test_a_chunked_upload_through_uvicorn(tmp_dir: Path) -> None:
    data = bytes(range(251)) * 8000  # ~2 MB, in 64 KiB chunks with no Content-Length
    body = multipart(("kind", None, b"regression"), ("file", "stream.bin", data))
    with serve(make_app(tmp_dir, max_bytes=4 * MiB)) as url:
        response = httpx.post(f"{url}/upload", content=iter(chunked(body)), timeout=30,
                              headers={"content-type":
                                       f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.json()["size_bytes"] == len(data)
    assert response.json()["fields"] == {"kind": "regression"}
    assert leftovers(tmp_dir) == []
