"""Request bodies written to disk as they arrive: file uploads of any size in bounded memory.

A :class:`DiskBody` stands where Twisted keeps a request's ``content``: every chunk is
written to a file in the target directory (so keeping it is a rename, never a copy) and
hashed on the way, so a gigabyte image costs one pass over its bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

from twisted.python.failure import Failure

from cwmpgw.web.site import CappedRequest

__all__ = ["DiskBody", "DiskBodyRequest"]


class DiskBody:
    """A file-like body: ``write`` appends and hashes; ``keep`` renames it into place."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, self.path = tempfile.mkstemp(dir=directory, prefix=".incoming-")
        self._file: Any = os.fdopen(fd, "w+b")
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.kept = False

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._sha256.update(data)
        self._file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def read(self, size: int = -1) -> bytes:
        return bytes(self._file.read(size))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def keep(self, destination: str) -> None:
        """Flush, sync and rename the body to ``destination`` (same file system)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self.close()
        os.replace(self.path, destination)
        self.kept = True

    def discard(self) -> None:
        self.close()
        if not self.kept:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class DiskBodyRequest(CappedRequest):
    """A request whose body may go to disk as it arrives (:meth:`disk_body` says where, or
    None to keep it in memory); a body not taken by the time the request ends is removed."""

    def disk_body(self) -> DiskBody | None:
        return None

    def gotLength(self, length: int | None) -> None:
        body = self.disk_body()
        if body is not None:
            self.content = body
        else:
            super().gotLength(length)

    def _discard(self) -> None:
        if isinstance(self.content, DiskBody):
            self.content.discard()

    def connectionLost(self, reason: Failure) -> None:
        self._discard()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def finish(self) -> None:
        self._discard()
        super().finish()  # type: ignore[no-untyped-call]
