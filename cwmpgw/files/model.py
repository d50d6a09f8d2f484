"""What the gateway knows of a file: its record, and where records are kept.

A file is bytes on disk (``<files.dir>/<id>``) and a record in Redis: its name, TR-069
FileType, size, SHA-256, and for firmware the SoftwareVersion it installs (what a
campaign checks the next Inform against). A file a CPE uploaded has ``origin`` "cpe" and
names its device and task.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Final

from twisted.internet.defer import Deferred
from zope.interface import Interface

from cwmpgw.bus.events import Event
from cwmpgw.cwmp import rpc

__all__ = [
    "FILE_FIELDS",
    "FileError",
    "FileInfo",
    "IFileIndex",
    "UploadSlot",
    "check_download_type",
    "check_name",
    "new_file_id",
]

_NAME_RE: Final = re.compile(r"[^/\\\x00-\x1f\x7f]{1,200}")


class FileError(ValueError):
    """A file request the caller got wrong; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def new_file_id(now: float) -> str:
    """``f`` + 11 hex digits of milliseconds + 16 random: unique, time-ordered."""
    return f"f{int(now * 1000):011x}{os.urandom(8).hex()}"


def check_name(name: str) -> str:
    """A file name a CPE may get as TargetFileName: no path separators, no controls."""
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise FileError("name", "1 to 200 characters, no '/', '\\' or control characters")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise FileError("name", "control characters are not allowed")
    return name


def check_download_type(file_type: str) -> str:
    """A Download FileType (TR-069 A.3.2.8): standard or ``X <OUI> <name>``."""
    try:
        rpc.validate("Download", {"file_type": file_type, "url": "https://x/"})
    except rpc.ArgumentError as e:
        raise FileError("file_type", e.message) from None
    return file_type


@dataclass(frozen=True, slots=True)
class FileInfo:
    id: str
    name: str
    file_type: str
    size: int
    sha256: str
    created: float
    origin: str = "api"  # "api": uploaded by an operator; "cpe": uploaded by a device
    software_version: str = ""  # firmware: the SoftwareVersion it installs
    description: str = ""
    device_id: str = ""  # origin "cpe": who uploaded it
    task_id: str = ""  # origin "cpe": the Upload task

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileInfo:
        return cls(**{k: d[k] for k in FILE_FIELDS if k in d})


FILE_FIELDS: Final = tuple(FileInfo.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class UploadSlot:
    """Where an Upload task's file goes: recorded when its URL is made."""

    task_id: str
    device_id: str
    file_type: str
    expires: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IFileIndex(Interface):
    """File records (and upload slots); each change stored with its event."""

    def add(info: FileInfo, event: Event) -> Deferred[None]:
        """Store the record and its event together."""

    def get(file_id: str) -> Deferred[FileInfo | None]:
        """The record, or None."""

    def list(offset: int, count: int, origin: str | None) -> Deferred[list[FileInfo]]:
        """Records oldest first; ``origin`` filters ("api", "cpe")."""

    def delete(file_id: str, event: Event) -> Deferred[bool]:
        """Forget the record; True if it existed (the event is stored only then)."""

    def add_slot(slot: UploadSlot) -> Deferred[None]:
        """Remember an upload slot until it expires."""

    def get_slot(task_id: str) -> Deferred[UploadSlot | None]:
        """The slot of an Upload task, while it is valid."""
