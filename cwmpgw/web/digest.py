"""Server-side HTTP Digest authentication (RFC 7616) for CPEs.

twisted.cred's own ``DigestCredentialFactory`` is MD5-only, lets a response be
replayed for the nonce's whole lifetime and compares digests with ``==``.  This
factory offers MD5 and SHA-256, tracks the nonce count of every nonce it has
accepted, and compares in constant time.

Nonces are stateless (issue time, randomness and an HMAC under a secret), so a
CPE that reconnects after the 401 can answer the earlier challenge, and several
gateway processes sharing the secret accept each other's nonces.  Replay
protection is per process: the highest accepted ``nc`` of each nonce is kept in
a bounded table; across processes, each acceptance also advances the nonce's
count in Redis (:mod:`cwmpgw.acs.nonceclaims`), so a count accepted by one
process is ``stale=true`` on every other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import string
import struct
from collections import OrderedDict
from collections.abc import Sequence

from twisted.cred.credentials import IUsernameDigestHash
from twisted.cred.error import LoginFailed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import ICredentialFactory, IRequest
from zope.interface import implementer

__all__ = [
    "AUTH_PARAM",
    "QUOTED_BODY",
    "DigestCredentialFactory",
    "DigestCredentials",
    "compute_response",
    "ha1",
    "hash_hex",
    "unescape",
]

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_HEX_LENGTH = {"MD5": 32, "SHA-256": 64}

# Limits on what a client may send: a real Authorization value is a few hundred bytes.
_MAX_HEADER_BYTES = 4096
_MAX_PARAMS = 32

_REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")

# RFC 9110 tchar, for parameter names.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)
# Unquoted values are accepted a little more widely than a token (some CPEs send
# uri=/path unquoted): any visible ASCII except the delimiters that would make the
# header ambiguous.
_BARE_VALUE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('",\\')
_WHITESPACE = " \t"

_NC_RE = re.compile(r"[0-9a-fA-F]{8}")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")

_TIME = struct.Struct(">Q")  # issue time, integer milliseconds
_RANDOM_BYTES = 12
_MAC_BYTES = 16
_NONCE_BYTES = _TIME.size + _RANDOM_BYTES + _MAC_BYTES
_NONCE_RE = re.compile(f"[A-Za-z0-9_-]{{{_NONCE_BYTES * 4 // 3}}}")
_OPAQUE_LABEL = b"cwmpgw digest opaque\x00"
_MIN_SECRET_BYTES = 16


def _canonical_algorithm(algorithm: str) -> str:
    """Map an algorithm name, compared case-insensitively, to its canonical spelling."""
    name = algorithm.upper()
    if name not in _HASHES:
        raise ValueError(f"unsupported digest algorithm: {algorithm!r}")
    return name


def hash_hex(algorithm: str, data: bytes) -> str:
    """H(data) as lowercase hex, for the Digest algorithms "MD5" and "SHA-256"."""
    name = _canonical_algorithm(algorithm)
    if name == "MD5":
        # MD5 is what RFC 7616 prescribes here, not our choice of primitive.
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    return _HASHES[name](data).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password): the only form in which a credential is stored."""
    return hash_hex(algorithm, f"{username}:{realm}:{password}".encode())


def compute_response(
    algorithm: str,
    ha1_hex: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str,
    method: str,
    uri: str,
) -> str:
    """The RFC 7616 ``response`` for qop=auth, shared by the server, tests and the simulator."""
    if qop != "auth":
        raise ValueError("only qop=auth is supported")
    ha2 = hash_hex(algorithm, f"{method}:{uri}".encode())
    return hash_hex(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


# What both sides read of an auth-param (RFC 9110 section 11.2; digest_client reads the
# challenges with the same expressions). A quoted-string's content: no control character
# (tab allowed), escapes kept, written as runs of plain characters with escapes between
# them (the same strings as "(plain | escape)*", a quarter of the CPU: Python's re tries
# an alternation at every character). A whole ``name=value`` and the blanks after it: a
# token, "=", the quoted content or a bare value (visible ASCII but the delimiters: some
# CPEs leave nonces and URIs unquoted).
QUOTED_BODY = (
    r'[^"\\\x00-\x08\x0a-\x1f\x7f]*(?:\\[^\x00-\x08\x0a-\x1f\x7f][^"\\\x00-\x08\x0a-\x1f\x7f]*)*'
)
AUTH_PARAM = (
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"
    f'(?:"({QUOTED_BODY})"|([!#-+\\--\\[\\]-~]+))'
    r"[ \t]*"
)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def unescape(quoted: str) -> str:
    """A quoted-string's content (as QUOTED_BODY matched it) without its escapes."""
    return _ESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted


# One parameter of a well-formed Authorization header and the separator after it: the
# comma (with empty list elements) or the end.
_PARAM_STEP = re.compile(AUTH_PARAM + r"(?:,[ \t,]*|\Z)")
_LEADING_SEPARATORS = re.compile(r"[ \t,]*")


def _parse_auth_params(header: bytes) -> dict[str, str]:
    """Parse ``name=value, name="quoted value", ...`` into a dict with lowercase names.

    Strict where ambiguity could hurt (duplicates, control characters, stray
    characters) and bounded in length and parameter count. A well-formed header is
    read a parameter at a time by one regular expression (a quarter of the character
    loop's CPU, for every Digest request); anything else — an error to name — goes
    through :func:`_parse_auth_params_strictly`, which decides.
    """
    if len(header) > _MAX_HEADER_BYTES:
        raise LoginFailed("authorization header too long")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise LoginFailed("authorization header is not UTF-8") from None
    params: dict[str, str] = {}
    i = _LEADING_SEPARATORS.match(text).end()  # type: ignore[union-attr]
    end = len(text)
    step = _PARAM_STEP.match
    while i < end:
        m = step(text, i)
        if m is None:
            return _parse_auth_params_strictly(text)
        name, quoted, bare = m.groups()
        name = name.lower()
        if name in params or len(params) == _MAX_PARAMS:
            return _parse_auth_params_strictly(text)
        params[name] = bare if quoted is None else unescape(quoted)
        i = m.end()
    return params


def _parse_auth_params_strictly(text: str) -> dict[str, str]:
    """The character-by-character parse: the reference, and the one that names errors."""
    params: dict[str, str] = {}
    i, end = 0, len(text)

    def skip_ws(j: int) -> int:
        while j < end and text[j] in _WHITESPACE:
            j += 1
        return j

    while True:
        # Empty list elements (", ,") are allowed, as in RFC 9110 section 5.6.1.
        i = skip_ws(i)
        while i < end and text[i] == ",":
            i = skip_ws(i + 1)
        if i == end:
            break
        start = i
        while i < end and text[i] in _TOKEN_CHARS:
            i += 1
        if i == start:
            raise LoginFailed("malformed authorization header")
        name = text[start:i].lower()
        i = skip_ws(i)
        if i == end or text[i] != "=":
            raise LoginFailed("malformed authorization header")
        i = skip_ws(i + 1)
        if i < end and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i == end:
                    raise LoginFailed("unterminated quoted string")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    i += 1
                    if i == end:
                        raise LoginFailed("unterminated quoted string")
                    c = text[i]
                if (c < " " and c != "\t") or c == "\x7f":
                    raise LoginFailed("control character in authorization header")
                chars.append(c)
                i += 1
            value = "".join(chars)
        else:
            start = i
            while i < end and text[i] in _BARE_VALUE_CHARS:
                i += 1
            if i == start:
                raise LoginFailed("malformed authorization header")
            value = text[start:i]
        if name in params:
            raise LoginFailed("duplicate authorization parameter")
        if len(params) == _MAX_PARAMS:
            raise LoginFailed("too many authorization parameters")
        params[name] = value
        i = skip_ws(i)
        if i < end and text[i] != ",":
            raise LoginFailed("malformed authorization header")
    return params


class _NonceTracker:
    """The highest accepted nonce count per nonce, in a bounded LRU table.

    When an entry is dropped (table full, or past the lifetime) its issue time
    raises a watermark: a nonce issued at or before the watermark that is not in
    the table may have been used already, so it is refused (fail closed) rather
    than risk accepting a replay.  A legitimate CPE gets ``stale=true`` and simply
    retries with a fresh nonce.
    """

    _log = Logger()

    def __init__(self, lifetime_ms: int, max_entries: int) -> None:
        self._lifetime_ms = lifetime_ms
        self._max_entries = max_entries
        # nonce -> [highest accepted nc, issue time in ms]
        self._entries: OrderedDict[str, list[int]] = OrderedDict()
        self._watermark_ms = -1

    def __len__(self) -> int:
        return len(self._entries)

    def may_be_used(self, nonce: str, issued_ms: int) -> bool:
        """False if this nonce's replay state was dropped while it could still be in use."""
        return nonce in self._entries or issued_ms > self._watermark_ms

    def commit(self, nonce: str, issued_ms: int, nc: int, now_ms: int) -> bool:
        """Record nc for a verified response; False if it is not above the last one."""
        entry = self._entries.get(nonce)
        if entry is None:
            if issued_ms <= self._watermark_ms:
                return False
            self._entries[nonce] = [nc, issued_ms]
        elif nc <= entry[0]:
            return False
        else:
            entry[0] = nc
            self._entries.move_to_end(nonce)
        self._prune(now_ms)
        return True

    def _prune(self, now_ms: int) -> None:
        """Drop expired entries at the cold end, then anything above the bound."""
        evicted_live = 0
        while self._entries:
            nonce, (_, issued_ms) = next(iter(self._entries.items()))
            expired = now_ms - issued_ms > self._lifetime_ms
            if not expired and len(self._entries) <= self._max_entries:
                break
            del self._entries[nonce]
            self._watermark_ms = max(self._watermark_ms, issued_ms)
            if not expired:
                evicted_live += 1
        if evicted_live:
            self._log.debug(
                "Digest nonce table full: evicted {count} live nonce(s); older nonces "
                "not in the table are now refused as stale",
                count=evicted_live,
            )


@implementer(IUsernameDigestHash)
class DigestCredentials:
    """A parsed, pre-validated Digest response, checked against a stored HA1.

    ``checkHash`` is where the response is verified and where its nonce count is
    committed to the replay table, so only a response that verifies can advance
    a nonce's count.

    A response that is right for the HA1 but whose nonce may not be used (expired,
    dropped from the replay table, or a nonce count not above the last one accepted:
    a replay, or a CPE re-using the previous session's nonce with nc=1) is refused
    and marked :attr:`stale`: the caller answers ``stale=true``. Only a right
    response is ever marked, so a wrong password is a plain failure whatever the
    nonce, and ``stale=true`` tells a client nothing it did not know.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        username: str,
        realm: str,
        algorithm: str,
        nonce: str,
        nc: str,
        cnonce: str,
        qop: str,
        uri: str,
        method: str,
        response: str,
        tracker: _NonceTracker,
        clock: IReactorTime,
        issued_ms: int,
        unusable: str | None = None,
    ) -> None:
        self.username = username
        self.realm = realm
        self.algorithm = algorithm
        self.nonce = nonce
        self.nc = nc
        self.cnonce = cnonce
        self.qop = qop
        self.uri = uri
        self.method = method
        self.response = response
        self._tracker = tracker
        self._clock = clock
        self._issued_ms = issued_ms
        self._committed = False
        # Why the nonce may not be used whatever the response ("nonce expired", ...).
        self.unusable = unusable
        # Set by checkHash: the response was right, its nonce was not (see the class doc).
        self.stale = False

    @property
    def nc_value(self) -> int:
        """The nonce count as a number (``nc`` was checked to be 8 hex digits)."""
        return int(self.nc, 16)

    def claim_ttl_ms(self, lifetime_ms: int) -> int:
        """How long a claim on this nonce must last: until it expires, plus a minute for
        clocks that differ between processes."""
        return max(1, self._issued_ms + lifetime_ms - _to_ms(self._clock.seconds())) + 60_000

    def __repr__(self) -> str:
        return (
            f"<DigestCredentials username={self.username!r} algorithm={self.algorithm} "
            f"nc={self.nc}>"
        )

    def checkHash(self, digestHash: str | bytes) -> bool:
        """True if the response matches this HA1 (for ``self.algorithm``) and is no replay.

        A second successful check of the same object returns True again without
        consuming another nonce count, so a checker may retry safely.
        """
        try:
            if isinstance(digestHash, bytes):
                digestHash = digestHash.decode("ascii")
            expected = compute_response(
                self.algorithm,
                digestHash.lower(),
                self.nonce,
                self.nc,
                self.cnonce,
                self.qop,
                self.method,
                self.uri,
            )
        except ValueError:  # includes UnicodeDecodeError
            return False
        if not hmac.compare_digest(expected.encode("ascii"), self.response.encode("ascii")):
            return False
        if self._committed:
            return True
        reason = self.unusable
        if reason is None:
            now_ms = _to_ms(self._clock.seconds())
            if not self._tracker.commit(self.nonce, self._issued_ms, int(self.nc, 16), now_ms):
                reason = "nonce count not increasing (a replay or a re-used nonce)"
        if reason is not None:
            self.stale = True
            self._log.info(
                "Digest response for {username} right but its nonce unusable ({reason}): stale",
                username=self.username,
                reason=reason,
            )
            return False
        self._committed = True
        return True

    def checkPassword(self, password: str) -> bool:
        """Like ``checkHash``, from a plaintext password (tests, simulators)."""
        return self.checkHash(ha1(self.algorithm, self.username, self.realm, password))


def _to_ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# An absolute URI in the Digest uri parameter: scheme, authority (no userinfo), target.
_ABSOLUTE_URI_RE = re.compile(r"(https?)://([^/?#@\s]+)([/?][^#\s]*)?", re.IGNORECASE)
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _authority(authority: str, scheme: str) -> str:
    authority = authority.lower()
    default = _DEFAULT_PORTS[scheme]
    return authority[: -len(default)] if authority.endswith(default) else authority


def _same_resource(uri: str, request: IRequest) -> bool:
    """Whether the Digest ``uri`` names the resource of this request (RFC 7616 §3.4.6).

    Usually it is the request-target itself. Some CPEs send the absolute URL they were
    given as the ACS URL (RFC 7616 allows the absolute form): it names the same resource
    only with the same path and query, the scheme of this connection (https on TLS) and
    the authority of the Host header (default ports aside, host case-insensitive).
    """
    request_uri: bytes = request.uri
    if uri.encode("utf-8") == request_uri:
        return True
    match = _ABSOLUTE_URI_RE.fullmatch(uri)
    if match is None:
        return False
    scheme, authority, target = match.group(1).lower(), match.group(2), match.group(3) or "/"
    if target.startswith("?"):
        target = "/" + target
    if target.encode("utf-8") != request_uri:
        return False
    if scheme != ("https" if request.isSecure() else "http"):
        return False
    host = request.getHeader(b"host")
    if not host:
        return False
    return _authority(authority, scheme) == _authority(host.decode("latin-1"), scheme)


@implementer(ICredentialFactory)
class DigestCredentialFactory:
    """RFC 7616 Digest (qop=auth; MD5 and SHA-256) with stateless nonces and replay checks.

    Nonce: urlsafe-base64(issue time ms (8) + random (12) + HMAC-SHA256(secret,
    time + random)[:16]).  The opaque is an HMAC of the nonce, so it needs no state
    either; a client that omits it is accepted (RFC 7616 says SHOULD return it),
    one that sends a wrong one is refused.

    Replay protection keeps up to ``max_tracked_nonces`` nonces in an LRU table.
    If a nonce is dropped from that table before it expires, it is refused from
    then on (fail closed): the CPE retries with a new nonce instead of us risking
    the acceptance of a replay.

    An unusable nonce (expired, or dropped from the table) is noted by ``decode``
    but decided only in ``checkHash``, against the stored HA1: a right response
    is marked ``stale`` (answer ``stale=true``, as RFC 7616 says), a wrong one is
    an ordinary failure. So ``stale=true`` proves the client knew the password (or
    replays a response that did), and guessing under an old nonce is counted.
    """

    scheme = b"digest"

    def __init__(
        self,
        realm: str,
        *,
        clock: IReactorTime,
        algorithms: Sequence[str] = ("MD5", "SHA-256"),
        nonce_lifetime: float = 300.0,
        secret: bytes | None = None,
        max_tracked_nonces: int = 100_000,
    ) -> None:
        if not realm or any(not (" " <= c <= "~") for c in realm):
            raise ValueError("realm must be non-empty printable ASCII")
        canonical = [_canonical_algorithm(a) for a in algorithms]
        if not canonical or len(set(canonical)) != len(canonical):
            raise ValueError("algorithms must be a non-empty list without duplicates")
        if not nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        if secret is not None and len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")
        self.realm = realm
        self.algorithms: tuple[str, ...] = tuple(canonical)
        self._clock = clock
        self._lifetime_ms = int(nonce_lifetime * 1000)
        self._secret = secret if secret is not None else os.urandom(32)
        self._tracker = _NonceTracker(self._lifetime_ms, max_tracked_nonces)

    @property
    def lifetime_ms(self) -> int:
        return self._lifetime_ms

    # -- nonces -------------------------------------------------------------------

    def _mac(self, data: bytes) -> bytes:
        return hmac.digest(self._secret, data, "sha256")

    def _new_nonce(self) -> str:
        body = _TIME.pack(_to_ms(self._clock.seconds())) + os.urandom(_RANDOM_BYTES)
        raw = body + self._mac(body)[:_MAC_BYTES]
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def _opaque(self, nonce: str) -> str:
        return self._mac(_OPAQUE_LABEL + nonce.encode("ascii"))[:_MAC_BYTES].hex()

    def _verify_nonce(self, nonce: str) -> int:
        """The issue time (ms) of one of our nonces; LoginFailed if it is not ours."""
        if not _NONCE_RE.fullmatch(nonce):
            raise LoginFailed("invalid nonce")
        raw = base64.urlsafe_b64decode(nonce)
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)[:_MAC_BYTES]):
            raise LoginFailed("invalid nonce")
        issued_ms: int = _TIME.unpack(body[: _TIME.size])[0]
        return issued_ms

    # -- challenges ---------------------------------------------------------------

    def challenges(self, *, stale: bool = False) -> list[bytes]:
        """One WWW-Authenticate value per algorithm, in order, sharing one fresh nonce."""
        nonce = self._new_nonce()
        opaque = self._opaque(nonce)
        values = []
        for algorithm in self.algorithms:
            value = (
                f'Digest realm={_quote(self.realm)}, qop="auth", algorithm={algorithm}, '
                f'nonce="{nonce}", opaque="{opaque}"'
            )
            if stale:
                value += ", stale=true"
            values.append(value.encode("ascii"))
        return values

    def getChallenge(self, request: IRequest) -> dict[str, str | bytes]:
        """ICredentialFactory: the challenge for the first algorithm, for twisted.web.guard."""
        nonce = self._new_nonce()
        return {
            "realm": self.realm,
            "qop": "auth",
            "algorithm": self.algorithms[0],
            "nonce": nonce,
            "opaque": self._opaque(nonce),
        }

    # -- responses ----------------------------------------------------------------

    def decode(self, response: bytes, request: IRequest) -> DigestCredentials:
        """Parse and pre-validate an Authorization value (after the scheme).

        Everything that can be checked without the stored HA1 is checked here;
        the digest itself and the nonce count are checked in ``checkHash``.
        """
        params = _parse_auth_params(response)
        for name in _REQUIRED:
            if not params.get(name):
                raise LoginFailed(f"missing {name}")
        if params["realm"] != self.realm:
            raise LoginFailed("realm mismatch")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in self.algorithms:
            raise LoginFailed("algorithm not offered")
        if params["qop"] != "auth":
            raise LoginFailed("qop must be auth")
        if params.get("userhash", "false").lower() != "false":
            raise LoginFailed("userhash not supported")
        nc = params["nc"]
        if not _NC_RE.fullmatch(nc):
            raise LoginFailed("nc must be 8 hex digits")
        if int(nc, 16) == 0:
            raise LoginFailed("nc must be at least 1")
        digest = params["response"]
        if len(digest) != _HEX_LENGTH[algorithm] or not _HEX_RE.fullmatch(digest):
            raise LoginFailed("malformed response digest")
        uri = params["uri"]
        if not _same_resource(uri, request):
            raise LoginFailed("digest uri does not match request")
        nonce = params["nonce"]
        issued_ms = self._verify_nonce(nonce)
        opaque = params.get("opaque")
        if opaque is not None and not hmac.compare_digest(
            opaque.encode("utf-8"), self._opaque(nonce).encode("ascii")
        ):
            raise LoginFailed("opaque mismatch")
        now_ms = _to_ms(self._clock.seconds())
        unusable = None
        if abs(now_ms - issued_ms) > self._lifetime_ms:
            # A nonce from the future comes from a peer process with a skewed clock.
            unusable = "nonce expired"
        elif not self._tracker.may_be_used(nonce, issued_ms):
            unusable = "nonce no longer tracked"
        method: bytes = request.method
        return DigestCredentials(
            username=params["username"],
            realm=params["realm"],
            algorithm=algorithm,
            nonce=nonce,
            nc=nc,
            cnonce=params["cnonce"],
            qop=params["qop"],
            uri=uri,
            method=method.decode("latin-1"),
            response=digest.lower(),
            tracker=self._tracker,
            clock=self._clock,
            issued_ms=issued_ms,
            unusable=unusable,
        )
