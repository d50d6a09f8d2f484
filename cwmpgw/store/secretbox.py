"""Secrets the gateway must be able to use again, encrypted at rest (AES-256-GCM).

Connection-request passwords cannot be stored as hashes: Digest needs the password to
answer the CPE's challenge. They are encrypted with a key kept outside Redis (a file in
the data directory, or one the operator provides), and each ciphertext is bound to its
device id, so a ciphertext copied onto another device's record does not decrypt.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SecretBox", "SecretBoxError", "load_or_create_key"]

_VERSION = "v1"


class SecretBoxError(ValueError):
    """A ciphertext that does not decrypt with this key for this context."""


def load_or_create_key(path: str) -> bytes:
    """The 32-byte key in ``path`` (base64), created with mode 0600 on first use."""
    try:
        with open(path, "rb") as f:
            key = base64.b64decode(f.read().strip(), validate=True)
    except FileNotFoundError:
        key = AESGCM.generate_key(bit_length=256)
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(key) + b"\n")
        os.replace(tmp, path)
        return key
    except ValueError:
        raise SecretBoxError(f"{path} does not hold a base64 key") from None
    if len(key) != 32:
        raise SecretBoxError(f"{path} must hold a 32-byte key (base64), not {len(key)} bytes")
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: str) -> str:
        version, _, body = token.partition(":")
        if version != _VERSION:
            raise SecretBoxError("unknown ciphertext version")
        try:
            raw = base64.b64decode(body, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, ValueError):
            raise SecretBoxError("the secret does not decrypt with this key") from None
