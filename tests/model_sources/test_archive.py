"""The structure checks of uploaded .keras archives (no Keras: the API process runs them).
Every archive is built here, byte for byte, with zipfile."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from tuner_service.model_sources.archive import (
    ARCHIVE_MEMBERS,
    Archive,
    ModelFileProblem,
    read_archive,
)

LIMIT = 8 << 30
CONFIG = {"module": "keras.src.models.functional", "class_name": "Functional",
          "config": {"name": "functional", "layers": []}, "registered_name": "Functional"}
METADATA = {"keras_version": "3.15.1", "date_saved": "2026-01-01@00:00:00"}
WEIGHTS = b"\x89HDF\r\n\x1a\n" + bytes(200)


def members(config: object = CONFIG, metadata: object = METADATA) -> list[tuple[str, bytes]]:
    """The members Keras writes, in its order."""
    return [("metadata.json", json.dumps(metadata).encode()),
            ("config.json", json.dumps(config).encode()),
            ("model.weights.h5", WEIGHTS)]


def write_zip(path: Path, entries: list[tuple[str, bytes]],
              compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def patch_central_directory(path: Path, name: str, offset: int, value: int, size: str) -> None:
    """Overwrite one field of the member's central directory entry: what readers trust."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first central directory entry
    while data[entry + 46:entry + 46 + len(name)] != name.encode():
        entry = data.index(b"PK\x01\x02", entry + 4)
    struct.pack_into(f"<{size}", data, entry + offset, value)
    path.write_bytes(bytes(data))


def refused(path: Path, *, max_inflated_bytes: int = LIMIT) -> str:
    """The reason read_archive gives; and the checks wrote nothing next to the file."""
    before = sorted(path.parent.iterdir())
    with pytest.raises(ModelFileProblem) as problem:
        read_archive(path, max_inflated_bytes=max_inflated_bytes)
    assert sorted(path.parent.iterdir()) == before
    return str(problem.value)


def test_the_members_are_what_keras_writes() -> None:
    assert ARCHIVE_MEMBERS == {"config.json", "metadata.json", "model.weights.h5"}


def test_a_keras_archive_gives_its_config_and_keras_version(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "m.keras", members())
    assert read_archive(path, max_inflated_bytes=LIMIT) == Archive(CONFIG, "3.15.1")


def test_deflated_members_and_no_metadata_are_accepted(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "m.keras", members()[1:], zipfile.ZIP_DEFLATED)
    assert read_archive(path, max_inflated_bytes=LIMIT) == Archive(CONFIG, None)


@pytest.mark.parametrize(("name", "reason"), [
    ("evil.py", "'evil.py', which is not part of a Keras model file"),
    ("../evil", "'../evil', a path that could leave the folder"),
    ("..\\evil", "a path that could leave the folder"),
    ("/etc/x", "the absolute path '/etc/x'"),
    ("assets/", "the folder or nested path 'assets/'"),
    ("assets/vocabulary.txt", "the folder or nested path 'assets/vocabulary.txt'"),
])
def test_a_member_outside_the_three_is_refused(tmp_path: Path, name: str, reason: str) -> None:
    path = write_zip(tmp_path / "m.keras", [*members(), (name, b"import os")])
    assert reason in refused(path)


def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    # Readers disagree on which copy of a name counts; zipfile itself takes the last one.
    harmless = json.dumps(CONFIG).encode()
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_zip(tmp_path / "m.keras", [("config.json", harmless), *members()[:1],
                                                 ("config.json", b'{"evil": 1}'),
                                                 members()[2]])
    assert refused(path) == "the archive holds config.json more than once"


@pytest.mark.parametrize("missing", ["config.json", "model.weights.h5"])
def test_a_required_member_must_be_there(tmp_path: Path, missing: str) -> None:
    path = write_zip(tmp_path / "m.keras", [m for m in members() if m[0] != missing])
    assert f"the archive has no {missing}" in refused(path)


def test_an_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "m.keras", members())
    patch_central_directory(path, "model.weights.h5", offset=8, value=0x1, size="H")
    assert refused(path) == "model.weights.h5 is encrypted"


def test_an_unusual_compression_method_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "m.keras", members(), zipfile.ZIP_BZIP2)
    assert "uses zip compression method 12; only stored or deflated" in refused(path)


@pytest.mark.parametrize("content", [b"", b"not a zip at all, just text\n"],
                         ids=["empty", "text"])
def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(content)
    assert refused(path).startswith("the file is not a zip archive")


def test_a_truncated_zip_is_refused(tmp_path: Path) -> None:
    whole = write_zip(tmp_path / "whole.keras", members()).read_bytes()
    path = tmp_path / "m.keras"
    path.write_bytes(whole[:len(whole) // 2])
    assert "truncated or damaged" in refused(path)


def test_a_corrupt_config_is_refused_by_its_crc(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "m.keras", members())
    data = path.read_bytes()
    at = data.index(b'"Functional"')
    path.write_bytes(data[:at] + b'"Functionol"' + data[at + 12:])  # stored: same length
    assert "config.json is corrupt in the archive (Bad CRC-32" in refused(path)


def test_a_forged_small_declared_size_is_not_trusted(tmp_path: Path) -> None:
    # The central directory claims config.json is 5 bytes: the read stops there, and the
    # CRC of those 5 bytes gives the lie away.
    path = write_zip(tmp_path / "m.keras", members())
    patch_central_directory(path, "config.json", offset=24, value=5, size="I")
    assert "config.json is corrupt in the archive" in refused(path)


def test_an_archive_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "m.keras", members())
    total = sum(len(data) for _, data in members())
    assert refused(path, max_inflated_bytes=total - 1) == (
        f"the archive inflates to {total:,} bytes, more than the limit of {total - 1:,} bytes")
    assert read_archive(path, max_inflated_bytes=total).keras_version == "3.15.1"


def test_a_zip_bomb_is_refused_by_its_declared_sizes(tmp_path: Path) -> None:
    # 200 MiB of zeros deflate to ~200 KB (1028:1); written streaming, never held in memory.
    path = write_zip(tmp_path / "m.keras", members()[:2], zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("model.weights.h5")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as weights:
            chunk = bytes(1 << 20)
            for _ in range(200):
                weights.write(chunk)
    assert path.stat().st_size < 1 << 20
    reason = refused(path)
    assert reason.startswith("model.weights.h5 declares 209,715,200 bytes stored in ")
    assert reason.endswith("a compression ratio above 1000:1 is a zip bomb, not a model")


def test_a_config_over_16_mib_is_refused_before_it_is_read(tmp_path: Path) -> None:
    padded = json.dumps(CONFIG).encode() + b" " * (17 << 20)
    path = write_zip(tmp_path / "m.keras", members()[:1] + [("config.json", padded)]
                     + members()[2:], zipfile.ZIP_DEFLATED)
    assert refused(path) == (f"config.json declares {len(padded):,} bytes, more than the "
                             f"limit of {16 << 20:,} bytes")


@pytest.mark.parametrize(("config", "reason"), [
    (b"{'class_name': 'Functional'", "config.json is not valid JSON (Expecting property name"),
    (b"\xff\xfe{}", "config.json is not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "config.json nests its JSON too deeply"),
    (b'["Functional"]', "config.json holds a JSON list, not the object Keras writes"),
    (b'{"config": {}}', "config.json has no class_name: it does not describe a Keras model"),
], ids=["not-json", "not-utf8", "too-deep", "a-list", "no-class-name"])
def test_a_config_that_is_not_a_keras_config_is_refused(tmp_path: Path, config: bytes,
                                                        reason: str) -> None:
    path = write_zip(tmp_path / "m.keras", members()[:1] + [("config.json", config)]
                     + members()[2:])
    assert refused(path).startswith(reason)


@pytest.mark.parametrize(("metadata", "reason"), [
    (["3.15.1"], "metadata.json holds a JSON list, not an object"),
    ({"keras_version": 3}, "metadata.json's keras_version is not a version string"),
])
def test_metadata_must_be_an_object(tmp_path: Path, metadata: object, reason: str) -> None:
    path = write_zip(tmp_path / "m.keras", members(metadata=metadata))
    assert refused(path) == reason


def test_a_zip_of_many_members_is_refused_before_its_directory_is_read(tmp_path: Path
                                                                       ) -> None:
    # 200,000 empty members: zipfile would build 200,000 objects before any check could run.
    crowded = write_zip(tmp_path / "crowded.keras",
                        members() + [(f"m{i}", b"") for i in range(200_000)])
    assert refused(crowded).startswith("the archive has 65,535 members; at most 64 are "
                                       "expected: a Keras model file holds config.json")
