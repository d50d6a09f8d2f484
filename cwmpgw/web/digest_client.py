"""The client half of HTTP authentication for Connection Requests, sans-IO.

The gateway is the client here: a CPE answers our GET with ``401`` and one or more
``WWW-Authenticate`` headers, and we answer with an ``Authorization`` header.  CPE
firmware is old and varied, so this side accepts RFC 7616 (qop=auth, MD5 or SHA-256,
``-sess`` variants), the RFC 2069 form without qop, and Basic only when the operator
allows it for the device: Basic sends the password in clear over plain HTTP.

Parsing is strict and bounded (a hostile CPE controls every byte of the challenge):
anything malformed raises :class:`ChallengeError`, never another exception.
"""

from __future__ import annotations

import base64
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cwmpgw.web.digest import AUTH_PARAM, QUOTED_BODY, ha1, hash_hex, unescape

__all__ = [
    "Challenge",
    "ChallengeError",
    "authorization",
    "choose",
    "is_stale",
    "parse_challenges",
]

_MAX_HEADER_BYTES = 8192
_MAX_CHALLENGES = 16
_MAX_PARAMS = 32

# RFC 9110 tchar, for schemes and parameter names.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)
# RFC 9110 token68, without its trailing "=" padding.
_TOKEN68_CHARS = frozenset("-._~+/" + string.digits + string.ascii_letters)
_WHITESPACE = " \t"
# Unquoted values are accepted a little more widely than a token (some CPEs send
# unquoted base64 nonces with "=" padding): visible ASCII except the delimiters.
_BARE_VALUE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('",\\')
# The same sets as regular expressions: the cursor below matches runs with them rather
# than looking at one character at a time (the gateway parses thousands of challenges a
# second).
_WS_RE = re.compile(r"[ \t]*")
_SEPARATORS_RE = re.compile(r"[ \t]*(?:,[ \t]*)*")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_RE = re.compile(r"([\-._~+/0-9A-Za-z]+=*)[ \t]*(?=,|\Z)")
_PARAM_START_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*=")
_BARE_VALUE_RE = re.compile(r"[!#-+\--\[\]-~]+")
# A quoted-string (its content as web.digest reads it: escapes kept); its closing quote
# is the first one not escaped.
_QUOTED_RE = re.compile(f'"({QUOTED_BODY})"')
# The usual value, one challenge with parameters (``Digest realm="r", nonce="n", ...``),
# is read by _parse_simple in one pass; anything else by the full parser below.
_SCHEME_SP_RE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]+")
_PARAM_RE = re.compile(AUTH_PARAM)
_QUOTED_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Digest algorithm name (upper case) -> (hash for hash_hex, is a -sess variant, preference).
_ALGORITHMS: dict[str, tuple[str, bool, int]] = {
    "SHA-256": ("SHA-256", False, 4),
    "SHA-256-SESS": ("SHA-256", True, 3),
    "MD5": ("MD5", False, 2),
    "MD5-SESS": ("MD5", True, 1),
}


class ChallengeError(ValueError):
    """A WWW-Authenticate value we cannot parse or a challenge we cannot answer."""


@dataclass(frozen=True)
class Challenge:
    """One challenge: a lower-case scheme and its parameters (lower-case names).

    ``token68`` holds the opaque form some schemes use instead of parameters.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def algorithm(self) -> str:
        """The Digest algorithm as sent, upper case; MD5 when absent (RFC 7616 section 3.3)."""
        return self.params.get("algorithm", "MD5").upper()

    @property
    def qop_options(self) -> frozenset[str]:
        """The qop values offered; empty for an RFC 2069 challenge without qop.

        Computed once (asked twice per request). Not ``functools.cached_property``: on
        Python 3.11 it takes a lock on every read.
        """
        known: frozenset[str] | None = self.__dict__.get("_qop_options")
        if known is not None:
            return known
        raw = self.params.get("qop")
        if raw is None:
            known = frozenset()
        else:
            known = frozenset(part.strip().lower() for part in raw.split(",") if part.strip())
        self.__dict__["_qop_options"] = known  # frozen: set as cached_property would
        return known

    @property
    def stale(self) -> bool:
        return is_stale(self)


def is_stale(challenge: Challenge) -> bool:
    """True for a Digest challenge with ``stale=true``: retry once with its fresh nonce."""
    return challenge.scheme == "digest" and challenge.params.get("stale", "").lower() == "true"


class _Parser:
    """A cursor over one header value, following RFC 9110 section 11.6.1."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.end = len(text)

    def skip_ws(self) -> None:
        self.i = _WS_RE.match(self.text, self.i).end()  # type: ignore[union-attr]

    def skip_list_separators(self) -> None:
        """Skip OWS and empty list elements (", ,"), as RFC 9110 section 5.6.1 allows."""
        self.i = _SEPARATORS_RE.match(self.text, self.i).end()  # type: ignore[union-attr]

    def at_end(self) -> bool:
        return self.i == self.end

    def peek(self) -> str:
        return self.text[self.i] if self.i < self.end else ""

    def token(self) -> str:
        m = _TOKEN_RE.match(self.text, self.i)
        if m is None:
            raise ChallengeError(f"expected a token at offset {self.i}")
        self.i = m.end()
        return m.group()

    def token68(self) -> str | None:
        """A token68 if one stands alone here (followed by a list end), else None."""
        m = _TOKEN68_RE.match(self.text, self.i)
        if m is None:
            return None
        self.i = m.end()
        return m.group(1)

    def starts_param(self) -> bool:
        """At ``name OWS =``: a parameter of the current challenge, not a new challenge."""
        return _PARAM_START_RE.match(self.text, self.i) is not None

    def value(self) -> str:
        if self.peek() == '"':
            return self.quoted_string()
        m = _BARE_VALUE_RE.match(self.text, self.i)
        if m is None:
            raise ChallengeError(f"expected a value at offset {self.i}")
        self.i = m.end()
        return m.group()

    def quoted_string(self) -> str:
        m = _QUOTED_RE.match(self.text, self.i)
        if m is None:
            raise ChallengeError(
                "control character in quoted string"
                if _QUOTED_CONTROL_RE.search(self.text, self.i + 1, self._quoted_end())
                else "unterminated quoted string"
            )
        self.i = m.end()
        value = m.group(1)
        return unescape(value)

    def _quoted_end(self) -> int:
        """Where the quoted string starting here would end (its closing quote), or the end."""
        j = self.i + 1
        while j < self.end:
            c = self.text[j]
            if c == '"':
                return j
            j += 2 if c == "\\" else 1
        return self.end


def _parse_simple(text: str) -> list[Challenge] | None:
    """One challenge with parameters, each once, one comma apart; else None.

    What it accepts, it reads exactly as the full parser does (which then runs on the
    rest, and alone raises errors).
    """
    scheme = _SCHEME_SP_RE.match(text)
    if scheme is None or _TOKEN68_RE.match(text, scheme.end()) is not None:
        return None
    params: dict[str, str] = {}
    pos, end = scheme.end(), len(text)
    while True:
        m = _PARAM_RE.match(text, pos)
        if m is None:
            return None
        name, quoted = m.group(1).lower(), m.group(2)
        if name in params or len(params) == _MAX_PARAMS:
            return None
        if quoted is None:
            params[name] = m.group(3)
        else:
            params[name] = unescape(quoted)
        pos = m.end()
        if pos == end:
            return [Challenge(scheme.group(1).lower(), params)]
        if text[pos] != ",":
            return None
        pos = _WS_RE.match(text, pos + 1).end()  # type: ignore[union-attr]
        if pos == end:
            return None


def _parse_value(raw: bytes) -> list[Challenge]:
    if len(raw) > _MAX_HEADER_BYTES:
        raise ChallengeError("WWW-Authenticate value too long")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ChallengeError("WWW-Authenticate value is not UTF-8") from None
    simple = _parse_simple(text)
    if simple is not None:
        return simple
    p = _Parser(text)
    challenges: list[Challenge] = []
    p.skip_list_separators()
    while not p.at_end():
        scheme = p.token().lower()
        params: dict[str, str] = {}
        token68: str | None = None
        if p.peek() and p.peek() not in _WHITESPACE + ",":
            raise ChallengeError(f"unexpected character after scheme {scheme!r}")
        p.skip_ws()
        if not p.at_end() and p.peek() != ",":
            token68 = p.token68()
            if token68 is None:
                while True:
                    name = p.token().lower()
                    p.skip_ws()
                    if p.peek() != "=":
                        raise ChallengeError(f"expected '=' after parameter {name!r}")
                    p.i += 1
                    p.skip_ws()
                    value = p.value()
                    if name in params:
                        raise ChallengeError(f"duplicate parameter {name!r}")
                    if len(params) == _MAX_PARAMS:
                        raise ChallengeError("too many parameters")
                    params[name] = value
                    p.skip_ws()
                    if p.at_end():
                        break
                    if p.peek() != ",":
                        raise ChallengeError(f"expected ',' at offset {p.i}")
                    p.skip_list_separators()
                    if p.at_end() or not p.starts_param():
                        break
        if len(challenges) == _MAX_CHALLENGES:
            raise ChallengeError("too many challenges")
        challenges.append(Challenge(scheme, params, token68))
        p.skip_list_separators()
    return challenges


def parse_challenges(values: Sequence[bytes]) -> list[Challenge]:
    """Every challenge of every WWW-Authenticate value, in order.

    Raises :class:`ChallengeError` if any value is malformed.
    """
    challenges: list[Challenge] = []
    for raw in values:
        challenges.extend(_parse_value(raw))
        if len(challenges) > _MAX_CHALLENGES:
            raise ChallengeError("too many challenges")
    return challenges


def _digest_rank(challenge: Challenge) -> int:
    """Preference of a Digest challenge we can answer; 0 if we cannot."""
    params = challenge.params
    if "realm" not in params or not params.get("nonce"):
        return 0
    spec = _ALGORITHMS.get(challenge.algorithm)
    if spec is None:
        return 0
    _, sess, rank = spec
    qops = challenge.qop_options
    if "qop" in params:
        if not qops & {"auth", "auth-int"}:
            return 0
    elif sess:
        return 0  # -sess needs a cnonce, which only exists with qop
    return rank


def choose(challenges: Sequence[Challenge], *, allow_basic: bool) -> Challenge | None:
    """The strongest challenge we can answer, or None.

    Digest SHA-256 over SHA-256-sess over MD5 over MD5-sess; among equals, the first
    offered.  Basic only when ``allow_basic`` (the operator's per-device opt-in).
    """
    best: Challenge | None = None
    best_rank = 0
    for challenge in challenges:
        if challenge.scheme == "digest":
            rank = _digest_rank(challenge)
        elif challenge.scheme == "basic" and allow_basic and challenge.token68 is None:
            rank = -1  # usable, but below every Digest challenge
        else:
            rank = 0
        if rank != 0 and (best is None or rank > best_rank):
            best, best_rank = challenge, rank
    return best


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_field(name: str, value: str) -> None:
    if _CONTROL_RE.search(value):
        raise ChallengeError(f"control character in {name}")


def authorization(
    challenge: Challenge,
    username: str,
    password: str,
    method: str,
    uri: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
) -> bytes:
    """The Authorization header value answering ``challenge`` (from :func:`choose`).

    ``uri`` is the request-target (path and query).  With qop, ``auth`` is preferred
    and ``auth-int`` used otherwise (a GET has an empty body); without qop the
    RFC 2069 form is produced.  The value contains the password (Basic) or a
    password-derived hash: never log it.
    """
    _check_field("username", username)
    _check_field("uri", uri)
    if challenge.scheme == "basic":
        if ":" in username:
            raise ChallengeError("a Basic username cannot contain ':'")
        token = base64.b64encode(f"{username}:{password}".encode())
        return b"Basic " + token
    if challenge.scheme != "digest" or _digest_rank(challenge) == 0:
        raise ChallengeError(f"cannot answer a {challenge.scheme!r} challenge")
    if not 1 <= nc <= 0xFFFFFFFF:
        raise ValueError("nc must fit in 8 hex digits")
    params = challenge.params
    realm = params["realm"]
    nonce = params["nonce"]
    name = challenge.algorithm
    algorithm, sess, _ = _ALGORITHMS[name]
    qops = challenge.qop_options
    qop = ("auth" if "auth" in qops else "auth-int") if "qop" in params else None
    if cnonce is None:
        cnonce = os.urandom(16).hex()
    _check_field("cnonce", cnonce)
    nc_hex = f"{nc:08x}"

    ha1_hex = ha1(algorithm, username, realm, password)
    if sess:
        ha1_hex = hash_hex(algorithm, f"{ha1_hex}:{nonce}:{cnonce}".encode())
    if qop == "auth-int":
        ha2 = hash_hex(algorithm, f"{method}:{uri}:{hash_hex(algorithm, b'')}".encode())
    else:
        ha2 = hash_hex(algorithm, f"{method}:{uri}".encode())
    if qop is None:
        response = hash_hex(algorithm, f"{ha1_hex}:{nonce}:{ha2}".encode())
    else:
        response = hash_hex(algorithm, f"{ha1_hex}:{nonce}:{nc_hex}:{cnonce}:{qop}:{ha2}".encode())

    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
    ]
    if "algorithm" in params:
        # Echo the spelling the CPE used; RFC 2069-era CPEs never see the parameter.
        parts.append(f"algorithm={params['algorithm']}")
    parts.append(f'response="{response}"')
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_hex}", f"cnonce={_quote(cnonce)}"]
    if "opaque" in params:
        parts.append(f"opaque={_quote(params['opaque'])}")
    return ("Digest " + ", ".join(parts)).encode("utf-8")
