"""Who may call the northbound API: bearer tokens, checked against SHA-256 digests.

The configuration holds only digests, so a leaked config file or Redis dump gives no
usable token. A presented token is hashed and compared with every configured digest in
constant time (``hmac.compare_digest``, no early exit), so timing tells nothing about
which digest came close.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterable

from twisted.logger import Logger
from zope.interface import Interface, implementer

from cwmpgw.config import NbiConfig
from cwmpgw.nbi.tokens import TOKEN_FILE, TOKEN_RE, ensure_token_file, token_sha256

__all__ = [
    "CHALLENGE",
    "IAuthorizer",
    "OpenAuthorizer",
    "TokenAuthorizer",
    "make_authorizer",
]

CHALLENGE = b'Bearer realm="cwmpgw"'
_MAX_HEADER = 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")

_log = Logger()


class IAuthorizer(Interface):
    def authorize(authorization: bytes | None) -> str | None:
        """The caller's name for logs, from the Authorization header, or None if refused.

        The name never contains the token: ``token:<first 8 hex digits of its digest>``.
        """


@implementer(IAuthorizer)
class TokenAuthorizer:
    """``Authorization: Bearer <token>`` whose SHA-256 is one of the configured digests."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(d.lower() for d in digests)
        for d in self._digests:
            if not _HEX64.fullmatch(d):
                raise ValueError("token digests must be 64 hex digits")

    def authorize(self, authorization: bytes | None) -> str | None:
        if not authorization or len(authorization) > _MAX_HEADER:
            return None
        try:
            text = authorization.decode("ascii")
        except UnicodeDecodeError:
            return None
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not TOKEN_RE.fullmatch(token):
            return None
        digest = token_sha256(token)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return f"token:{digest[:8]}" if matched else None


@implementer(IAuthorizer)
class OpenAuthorizer:
    """``nbi.auth = "none"``: everyone is let in (the config allows it only on loopback)."""

    def authorize(self, authorization: bytes | None) -> str | None:
        return "anonymous"


def make_authorizer(config: NbiConfig, data_dir: str) -> IAuthorizer:
    """The authorizer the configuration asks for.

    With ``auth = "token"`` and no ``token_sha256``, the token kept in
    ``<data_dir>/nbi-token`` is used (created on first start); its path is logged,
    the token never is. Does file I/O: call it from ``startService``, not a constructor.
    """
    if config.auth == "none":
        _log.warn("the northbound API accepts requests without a token (nbi.auth = none)")
        return OpenAuthorizer()
    digests = list(config.token_sha256)
    if not digests:
        digest, created = ensure_token_file(data_dir)
        path = os.path.join(data_dir, TOKEN_FILE)
        if created:
            _log.info("created an API token for the northbound API in {path}", path=path)
        else:
            _log.info("the northbound API accepts the token in {path}", path=path)
        digests.append(digest)
    return TokenAuthorizer(digests)
