"""Per-device, expiring, HMAC-signed file links and the credentials that go with them.

A grant is (kind, file, device, expiry): ``get`` a file, or ``put`` an Upload task's
file. The URL carries the device and the expiry with a MAC over all four; the Download
(Upload) RPC also carries the device's own Username (the device id) and Password (the
expiry and another MAC). A CPE presenting another device's URL with its own credentials
is refused, so is any changed URL, and so is everything after the expiry. The key is
shared through Redis, so every node accepts every link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

__all__ = ["Grant", "LinkSigner", "shared_file_secret"]

_PASSWORD_RE: Final = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


async def shared_file_secret(redis: Any, prefix: str) -> bytes:
    """The key links are signed with: drawn by the first node, read by every other."""
    key = prefix + "secret:file-links"
    await redis.execute_command("SET", key, os.urandom(32).hex(), "NX")
    value = await redis.get(key)
    return bytes.fromhex(value)


@dataclass(frozen=True, slots=True)
class Grant:
    kind: str  # "get" or "put"
    file_id: str  # a file id, or an Upload task id for "put"
    device_id: str
    expires: int  # Unix seconds


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the link secret must have at least 16 bytes")
        self._secret = secret

    def _mac(self, purpose: str, grant: Grant) -> str:
        message = "\x00".join(
            (purpose, grant.kind, grant.file_id, grant.device_id, str(grant.expires))
        ).encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def query(self, grant: Grant) -> str:
        """``d=…&e=…&s=…``: the signed part of a URL."""
        return f"d={quote(grant.device_id, safe='')}&e={grant.expires}&s={self._mac('url', grant)}"

    def password(self, grant: Grant) -> str:
        return f"{grant.expires}.{self._mac('password', grant)}"

    def url_valid(self, grant: Grant, signature: str, now: float) -> bool:
        good = hmac.compare_digest(self._mac("url", grant).encode(), signature.encode())
        return good and now < grant.expires

    def password_grant(
        self, kind: str, file_id: str, username: str, password: str, now: float
    ) -> Grant | None:
        """The grant these credentials prove, if they are valid now."""
        m = _PASSWORD_RE.fullmatch(password)
        if m is None:
            return None
        grant = Grant(kind, file_id, username, int(m.group(1)))
        good = hmac.compare_digest(self._mac("password", grant).encode(), m.group(2).encode())
        return grant if good and now < grant.expires else None
