"""UDP connection requests (TR-069 Annex G): a signed HTTP GET line in one datagram.

The CPE checks ``sig = HMAC-SHA1(ConnectionRequestPassword, ts ‖ id ‖ un ‖ cn)`` and
starts a session; nothing is sent back, so success is seen by the caller when the
session starts.  Several identical copies are sent because UDP is lossy.

Encoding choice: the HMAC text uses the raw username and cnonce, as Annex G defines the
signature over the values.  In the query they go raw too when they only hold characters
allowed in a URI query (RFC 3986 §3.4) other than ``& = + % #`` — the usual case, and byte
for byte what GenieACS sends (it never encodes) and what CPE parsers such as icwmp's
(which never decode) expect.  Anything else (spaces, ``&``, non-ASCII…) is
percent-encoded, since a raw value would make the request line unparseable anyway; a CPE
that does not decode will then reject the signature, which only affects such usernames.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["UdpConnectionRequester", "sign", "udp_message"]

# RFC 3986 query characters that may stay raw (unreserved letters/digits/"-._~" are never
# encoded by quote()); "&", "=", "+" are left out because query parsers split or decode them.
_QUERY_SAFE = "!$'()*,;:@/?"
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?")
_MAX_ID = 0xFFFFFFFF


def sign(ts: int, message_id: int, username: str, cnonce: str, password: str) -> str:
    """The Annex G signature: lower-case hex HMAC-SHA1 over the decimal ts and id, then
    username and cnonce, concatenated without separators."""
    text = f"{ts}{message_id}{username}{cnonce}".encode()
    return hmac.new(password.encode("utf-8"), text, hashlib.sha1).hexdigest()


def _authority(host: str, port: int) -> str:
    """``host:port`` for the URL and Host header; IPv6 literals are bracketed."""
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise ValueError(f"not an IP address or host name: {host!r}") from None
        return f"{host}:{port}"
    if address.version == 6:
        if "%" in host:
            raise ValueError("scoped IPv6 addresses are not supported")
        return f"[{address.compressed}]:{port}"
    return f"{address}:{port}"


def udp_message(
    host: str,
    port: int,
    *,
    ts: int,
    message_id: int,
    username: str,
    cnonce: str,
    password: str,
) -> bytes:
    """The datagram of one Annex G connection request to ``host:port``."""
    if ts < 0:
        raise ValueError("ts must not be negative")
    if not 0 <= message_id <= _MAX_ID:
        raise ValueError("message id must be an unsigned 32-bit integer")
    authority = _authority(host, port)
    sig = sign(ts, message_id, username, cnonce, password)
    query = (
        f"ts={ts}&id={message_id}&un={quote(username, safe=_QUERY_SAFE)}"
        f"&cn={quote(cnonce, safe=_QUERY_SAFE)}&sig={sig}"
    )
    return f"GET http://{authority}?{query} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


class UdpConnectionRequester:
    """Sends Annex G connection requests through ``send`` (the STUN server's socket,
    so that they come from the address the CPE's NAT binding was made with)."""

    _log = Logger()

    def __init__(
        self,
        send: Callable[[bytes, tuple[str, int]], None],
        *,
        clock: IReactorTime,
        copies: int = 3,
        interval: float = 0.5,
    ) -> None:
        if copies < 1:
            raise ValueError("copies must be at least 1")
        if interval < 0:
            raise ValueError("interval must not be negative")
        self._send = send
        self._clock = clock
        self._copies = copies
        self._interval = interval

    def request(self, host: str, port: int, username: str, password: str) -> Deferred[int]:
        """Send ``copies`` identical datagrams ``interval`` apart; fires with the number sent.

        The first goes out before this returns.  Errbacks if sending raises (the
        remaining copies are not sent); cancelling stops the remaining copies.
        """
        # icwmp ignores id 0 ("crid && ts"), so draw from 1..2**32-1.
        message_id = secrets.randbelow(_MAX_ID) + 1
        cnonce = secrets.token_hex(8)
        ts = int(self._clock.seconds())
        data = udp_message(
            host,
            port,
            ts=ts,
            message_id=message_id,
            username=username,
            cnonce=cnonce,
            password=password,
        )
        peer = f"{host}:{port}"
        pending: list[IDelayedCall] = []

        def cancel(_: Deferred[int]) -> None:
            for call in pending:
                if call.active():
                    call.cancel()
            pending.clear()

        result: Deferred[int] = Deferred(cancel)
        sent = 0

        def send_one() -> None:
            nonlocal sent
            pending.clear()
            try:
                self._send(data, (host, port))
            except Exception:
                # Handed to the caller, who decides whether it is worth a log line.
                result.errback(Failure())
                return
            sent += 1
            if sent >= self._copies:
                result.callback(sent)
            else:
                pending.append(self._clock.callLater(self._interval, send_one))

        self._log.info(
            "UDP connection request to {peer} for {username} (id {message_id})",
            peer=peer,
            username=username,
            message_id=message_id,
        )
        send_one()
        return result
