"""SASL SCRAM (RFC 5802, RFC 7677) for twisted.words, which offers only PLAIN and DIGEST-MD5.

Sans-IO: ``getInitialResponse`` / ``getResponse`` as :class:`ISASLMechanism` wants, and
:meth:`Scram.verify_success` for the server's signature in ``<success/>``, so a server
that does not know the password cannot pretend to have accepted it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from twisted.words.protocols.jabber.sasl_mechanisms import ISASLMechanism
from zope.interface import implementer

__all__ = ["Scram", "ScramError"]

_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


class ScramError(Exception):
    """The server's messages do not follow SCRAM, or its signature is wrong."""


def _attributes(message: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for part in message.split(b","):
        key, sep, value = part.partition(b"=")
        if not sep or len(key) != 1:
            raise ScramError("malformed SCRAM message")
        out[key.decode("ascii")] = value
    return out


def _saslname(name: str) -> bytes:
    return name.replace("=", "=3D").replace(",", "=2C").encode("utf-8")


@implementer(ISASLMechanism)
class Scram:
    def __init__(self, mechanism: str, username: str, password: str, nonce: str = "") -> None:
        if mechanism not in _HASHES:
            raise ValueError(f"unsupported mechanism {mechanism}")
        self.name = mechanism
        self._hash = _HASHES[mechanism]
        self._username = username
        self._password = password.encode("utf-8")
        self._nonce = (nonce or secrets.token_urlsafe(18)).encode("ascii")
        self._bare = b"n=" + _saslname(username) + b",r=" + self._nonce
        self._server_signature: bytes | None = None

    def getInitialResponse(self) -> bytes:
        return b"n,," + self._bare

    def getResponse(self, challenge: bytes) -> bytes:
        if self._server_signature is not None:
            # The server-final message sent as a challenge (some servers do): check it.
            self.verify_success(challenge)
            return b""
        attrs = _attributes(challenge)
        nonce, salt, iterations = attrs.get("r", b""), attrs.get("s"), attrs.get("i", b"")
        if not nonce.startswith(self._nonce) or nonce == self._nonce or salt is None:
            raise ScramError("the server's nonce or salt is wrong")
        try:
            rounds = int(iterations)
        except ValueError:
            raise ScramError("the iteration count is not a number") from None
        if not 1 <= rounds <= 1_000_000:
            raise ScramError("the iteration count is out of range")
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, base64.b64decode(salt), rounds)
        client_key = hmac.new(salted, b"Client Key", self._hash).digest()
        stored_key = hashlib.new(self._hash, client_key).digest()
        without_proof = b"c=biws,r=" + nonce
        auth_message = self._bare + b"," + challenge + b"," + without_proof
        signature = hmac.new(stored_key, auth_message, self._hash).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", self._hash).digest()
        self._server_signature = hmac.new(server_key, auth_message, self._hash).digest()
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify_success(self, data: bytes) -> None:
        """Check the server-final message (``v=...``); raises :class:`ScramError`."""
        if self._server_signature is None:
            raise ScramError("success before the SCRAM exchange finished")
        attrs = _attributes(data)
        if "e" in attrs:
            raise ScramError("the server reported an error")
        given = base64.b64decode(attrs.get("v", b""))
        if not hmac.compare_digest(given, self._server_signature):
            raise ScramError("the server's signature is wrong")
