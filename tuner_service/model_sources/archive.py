"""The structure checks of an uploaded ``.keras`` file, made without Keras and without
extracting anything: the API process runs them on every upload, before the file is stored.

A ``.keras`` file is a zip of three members: ``config.json`` (the model's architecture),
``metadata.json`` (the Keras version that saved it) and ``model.weights.h5``. Only the two
small JSON members are ever read here, each through a bounded read; the weights are judged
by their declared sizes alone. What the config names is checked by the worker
(``workers/model_files.py``), which has Keras to resolve those names against.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tuner_service.zip_directory import directory_of, too_large

CONFIG = "config.json"
METADATA = "metadata.json"
WEIGHTS = "model.weights.h5"
ARCHIVE_MEMBERS: frozenset[str] = frozenset({CONFIG, METADATA, WEIGHTS})
REQUIRED_MEMBERS: frozenset[str] = frozenset({CONFIG, WEIGHTS})

MAX_CONFIG_BYTES = 16 << 20
# Keras writes {"keras_version": ..., "date_saved": ...}: a few dozen bytes.
MAX_METADATA_BYTES = 1 << 20
MAX_VERSION_CHARS = 100
# DEFLATE cannot do better than ~1032:1, and real float weights compress far less; a member
# above this ratio (and large enough to matter) was made to exhaust memory or disk.
MAX_COMPRESSION_RATIO = 1000
BOMB_FLOOR_BYTES = 1 << 20
# Keras stores members uncompressed; a zip tool may deflate them. Other methods (bzip2,
# lzma) are not what Keras or common tools write and cost far more CPU to inflate.
ACCEPTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}

# What the directory may hold before it is read: the three members, and room to name the
# ones too many (a zip with a few extra members is told which).
MAX_MEMBERS = 64
_MEMBER_LIST = "config.json, model.weights.h5 and optionally metadata.json"


class ModelFileProblem(ValueError):
    """A file that is not a Keras model archive we accept; str(problem) is the user-facing
    reason."""


@dataclass(frozen=True)
class Archive:
    """What the checks read from an accepted archive: the parsed ``config.json`` and the
    Keras version ``metadata.json`` names (None when the file has no metadata)."""

    config: dict[str, Any]
    keras_version: str | None


def read_archive(path: Path, *, max_inflated_bytes: int) -> Archive:
    """Check a .keras zip without extracting it and return its parsed config.json and the
    Keras version that saved it. Raises ``ModelFileProblem`` naming the first problem found.
    """
    with path.open("rb") as file:
        zip_file = _open_zip(file)
        with zip_file:
            members = zip_file.infolist()
            _check_member_names(members)
            by_name = {member.filename: member for member in members}
            _check_sizes(by_name, max_inflated_bytes=max_inflated_bytes)
            config = _read_json(zip_file, by_name[CONFIG], limit=MAX_CONFIG_BYTES)
            metadata = (_read_json(zip_file, by_name[METADATA], limit=MAX_METADATA_BYTES)
                        if METADATA in by_name else None)
    return Archive(config=_checked_config(config), keras_version=_keras_version(metadata))


def _open_zip(file: BinaryIO) -> zipfile.ZipFile:
    # A truncated or damaged central directory raises more than BadZipFile (a seek before the
    # start of the file is an OSError, an impossible count a ValueError).
    problem = too_large(directory_of(file), max_entries=MAX_MEMBERS)
    if problem is not None:
        raise ModelFileProblem(f"{problem}: a Keras model file holds {_MEMBER_LIST}")
    try:
        return zipfile.ZipFile(file)
    except zipfile.BadZipFile as problem:
        raise ModelFileProblem(
            f"the file is not a zip archive, or a truncated or damaged one ({problem}); a Keras "
            "model file is the zip that model.save('model.keras') writes") from None
    except (OSError, EOFError, ValueError, NotImplementedError, zipfile.LargeZipFile
            ) as problem:
        raise ModelFileProblem(f"the zip archive is damaged ({problem})") from None


def _check_member_names(members: list[zipfile.ZipInfo]) -> None:
    """Each member must be one of ARCHIVE_MEMBERS, once; the required ones must be there."""
    for member in members:
        name = member.filename
        shown = repr(name[:100])
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise ModelFileProblem(f"the archive holds the absolute path {shown}; a Keras "
                                   f"model file holds only {_MEMBER_LIST}")
        if "\\" in name or ".." in name.split("/"):
            raise ModelFileProblem(f"the archive holds {shown}, a path that could leave the "
                                   f"folder it is extracted to; a Keras model file holds only "
                                   f"{_MEMBER_LIST}")
        if "/" in name or member.is_dir():
            raise ModelFileProblem(f"the archive holds the folder or nested path {shown}; "
                                   f"tuner-service accepts only {_MEMBER_LIST} (models with "
                                   "assets, e.g. lookup tables, are not supported)")
        if name not in ARCHIVE_MEMBERS:
            raise ModelFileProblem(f"the archive holds {shown}, which is not part of a Keras "
                                   f"model file ({_MEMBER_LIST})")
        if member.flag_bits & 0x1:
            raise ModelFileProblem(f"{name} is encrypted")
        if member.compress_type not in ACCEPTED_COMPRESSION:
            raise ModelFileProblem(f"{name} uses zip compression method "
                                   f"{member.compress_type}; only stored or deflated members "
                                   "are accepted")
    duplicates = sorted(name for name, count in
                        Counter(member.filename for member in members).items() if count > 1)
    if duplicates:
        # Readers disagree on which copy counts; a checked copy must be the one loaded.
        raise ModelFileProblem(f"the archive holds {duplicates[0]} more than once")
    missing = sorted(REQUIRED_MEMBERS - {member.filename for member in members})
    if missing:
        raise ModelFileProblem(f"the archive has no {' and no '.join(missing)}; a Keras model "
                               f"file holds {_MEMBER_LIST}")


def _check_sizes(by_name: dict[str, zipfile.ZipInfo], *, max_inflated_bytes: int) -> None:
    """Declared sizes, checked before any byte is inflated: the total, the JSON members'
    limits, and each member's compression ratio."""
    total = sum(member.file_size for member in by_name.values())
    if total > max_inflated_bytes:
        raise ModelFileProblem(f"the archive inflates to {total:,} bytes, more than the "
                               f"limit of {max_inflated_bytes:,} bytes")
    for name, limit in ((CONFIG, MAX_CONFIG_BYTES), (METADATA, MAX_METADATA_BYTES)):
        if name in by_name and by_name[name].file_size > limit:
            raise ModelFileProblem(f"{name} declares {by_name[name].file_size:,} bytes, more "
                                   f"than the limit of {limit:,} bytes")
    for name, member in by_name.items():
        if (member.file_size > BOMB_FLOOR_BYTES
                and member.file_size > MAX_COMPRESSION_RATIO * member.compress_size):
            raise ModelFileProblem(
                f"{name} declares {member.file_size:,} bytes stored in "
                f"{member.compress_size:,}: a compression ratio above "
                f"{MAX_COMPRESSION_RATIO}:1 is a zip bomb, not a model")


def _read_json(zip_file: zipfile.ZipFile, member: zipfile.ZipInfo, *, limit: int) -> Any:
    """The member's parsed JSON, read through a bounded read: at most ``limit + 1`` bytes,
    whatever size the archive declares."""
    name = member.filename
    try:
        with zip_file.open(member) as stream:
            data = stream.read(limit + 1)
            # Reading on to the end makes zipfile compare the CRC of what it inflated.
            trailing = stream.read(1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as problem:
        raise ModelFileProblem(f"{name} is corrupt in the archive ({problem})") from None
    if len(data) > limit or trailing:
        raise ModelFileProblem(f"{name} holds more than {limit:,} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelFileProblem(f"{name} is not UTF-8 text") from None
    except RecursionError:
        raise ModelFileProblem(f"{name} nests its JSON too deeply") from None
    except ValueError as problem:  # JSONDecodeError, and integers too long to convert
        raise ModelFileProblem(f"{name} is not valid JSON ({problem})") from None


def _checked_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ModelFileProblem(f"{CONFIG} holds a JSON {type(config).__name__}, not the "
                               "object Keras writes")
    missing = [key for key in ("class_name", "config") if key not in config]
    if missing:
        raise ModelFileProblem(f"{CONFIG} has no {' and no '.join(missing)}: it does not "
                               "describe a Keras model")
    return config


def _keras_version(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ModelFileProblem(f"{METADATA} holds a JSON {type(metadata).__name__}, not an "
                               "object")
    version = metadata.get("keras_version")
    if version is not None and not (isinstance(version, str)
                                    and len(version) <= MAX_VERSION_CHARS):
        raise ModelFileProblem(f"{METADATA}'s keras_version is not a version string")
    return version
