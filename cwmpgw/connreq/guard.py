"""Who a Connection Request may be sent to.

The Connection Request URL comes from the CPE itself (forced-inform parameter), so
anyone who can talk CWMP to us could otherwise make the gateway send requests into
any network it can reach.  By default a request may only go to the address the CPE
last connected from (the source of an authenticated session); operators widen that
with explicit networks (for CPEs whose ACS traffic leaves through a different NAT or
proxy than the one that forwards Connection Requests).

A STUN binding never widens this: it is learnt from a UDP datagram, whose source
address costs nothing to forge, so its address is used as a target only when these
rules allow that address anyway.  That is why the checks here do not even take one.

Only IP literals are accepted: no DNS is ever done for a CPE-supplied name.  The
functions never raise on any input; they return a :class:`Refusal` whose reason is safe
to publish in an event.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = [
    "GuardPolicy",
    "Refusal",
    "Target",
    "check_http_target",
    "check_udp_target",
    "parse_http_url",
]

IPAddress = IPv4Address | IPv6Address

_MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 characters (unreserved, reserved and "%"); anything else is refused rather
# than guessed at, since URL parsers disagree about it.
_URL_RE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BROADCAST = IPv4Address("255.255.255.255")
_THIS_NETWORK = IPv4Network("0.0.0.0/8")


@dataclass(frozen=True)
class GuardPolicy:
    """What the operator allows beyond the default (the CPE's own address only).

    ``allowed_ports`` empty means any port 1..65535.  An address inside
    ``allowed_networks`` is accepted even if the device never came from it, and even
    if it is loopback, link-local or one of ``own_addresses`` (so a lab can allow
    127.0.0.0/8 explicitly) — except ``own_ports`` (the gateway's own listeners: ACS,
    API, metrics) on a loopback, unspecified or own address, which nothing allows.
    """

    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    own_addresses: frozenset[str] = frozenset()
    allowed_ports: frozenset[int] = frozenset()
    own_ports: frozenset[int] = frozenset()
    schemes: frozenset[str] = frozenset({"http", "https"})
    _own: frozenset[IPAddress] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for network in self.allowed_networks:
            if not isinstance(network, IPv4Network | IPv6Network):
                raise ValueError(f"not an IP network: {network!r}")
        for port in self.allowed_ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"invalid port: {port!r}")
        own: set[IPAddress] = set()
        for text in self.own_addresses:
            address = _parse_address(text)
            if address is None:
                raise ValueError(f"not an IP address: {text!r}")
            own.add(address)
        object.__setattr__(self, "_own", frozenset(own))


@dataclass(frozen=True)
class Refusal:
    """Why a target was refused; the reason is safe to log and publish."""

    reason: str


@dataclass(frozen=True)
class Target:
    """A normalized target: ``host`` is a bare IP literal (IPv4-mapped IPv6 as IPv4).

    ``path`` is the HTTP request-target (path and query), "" for UDP.
    """

    scheme: str
    host: str
    port: int
    path: str

    @property
    def netloc(self) -> str:
        """``host:port`` for a URL, with the IPv6 host in brackets and a default port omitted."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if _DEFAULT_PORTS.get(self.scheme) == self.port:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def _parse_address(text: object) -> IPAddress | None:
    """An IP address from its literal (no zone id), IPv4-mapped IPv6 normalised; else None."""
    if not isinstance(text, str) or "%" in text or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _unmap(address)


def _unmap(address: IPAddress) -> IPAddress:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_host(host: str) -> Refusal | IPAddress:
    """The address of a URL host (bracketed IPv6 or dotted IPv4), or why not."""
    if host.startswith("["):
        if not host.endswith("]"):
            return Refusal("malformed host")
        inner = host[1:-1]
        if "%" in inner:
            return Refusal("IPv6 zone identifiers not allowed")
        try:
            return _unmap(IPv6Address(inner))
        except ValueError:
            return Refusal("malformed IPv6 address")
    if not host:
        return Refusal("missing host")
    try:
        return IPv4Address(host)
    except ValueError:
        pass
    if ":" in host:
        return Refusal("malformed host")
    return Refusal("hostname not allowed")


def _parse_port(text: str, default: int) -> Refusal | int:
    if text == "":
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return Refusal("invalid port")
    port = int(text)
    if not 1 <= port <= 65535:
        return Refusal("invalid port")
    return port


def parse_http_url(url: object, *, schemes: Iterable[str] = ("http", "https")) -> Refusal | Target:
    """Parse a Connection Request URL into a :class:`Target`, with no address policy.

    The syntax rules of :func:`check_http_target`: an allowed scheme, no userinfo, an IP
    literal host, a valid port.  Used by the HTTP client too, so it never resolves a name.
    """
    parsed = _parse_http_url(url, schemes)
    return parsed if isinstance(parsed, Refusal) else parsed[0]


def _parse_http_url(url: object, schemes: Iterable[str]) -> Refusal | tuple[Target, IPAddress]:
    """:func:`parse_http_url`, with the host's address as parsed (not parsed again)."""
    if not isinstance(url, str) or not url:
        return Refusal("missing URL")
    if len(url) > _MAX_URL_LENGTH:
        return Refusal("URL too long")
    if _URL_RE.fullmatch(url) is None:
        return Refusal("malformed URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return Refusal("malformed URL")
    scheme = scheme.lower()
    if scheme not in schemes:
        return Refusal("scheme not allowed")
    # The authority ends at the first "/", "?" or "#" (RFC 3986 section 3.2).
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, remainder = rest[:cut], rest[cut:]
    if "@" in authority:
        return Refusal("userinfo not allowed")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return Refusal("malformed host")
        host_text, port_part = authority[: close + 1], authority[close + 1 :]
        if port_part and not port_part.startswith(":"):
            return Refusal("malformed host")
        port_text = port_part[1:]
    elif authority.count(":") > 1:
        return Refusal("malformed host")  # an IPv6 literal without brackets
    else:
        host_text, _, port_text = authority.partition(":")
    host = _parse_host(host_text)
    if isinstance(host, Refusal):
        return host
    port = _parse_port(port_text, _DEFAULT_PORTS.get(scheme, 0))
    if isinstance(port, Refusal):
        return port
    path = remainder.partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path  # only "" or "?query" can get here
    return Target(scheme, str(host), port, path), host


def _address_refusal(
    address: IPAddress, port: int, last_source: object, policy: GuardPolicy
) -> Refusal | None:
    """The address policy shared by HTTP and UDP targets; None when allowed."""
    if policy.allowed_ports and port not in policy.allowed_ports:
        return Refusal("port not allowed")
    if port in policy.own_ports and (
        address.is_loopback
        or address.is_unspecified
        or address in _THIS_NETWORK
        or address in policy._own
    ):
        return Refusal("the gateway's own service not allowed")
    if any(address in network for network in policy.allowed_networks):
        return None
    if address.is_unspecified or address in _THIS_NETWORK:
        # Linux connects 0.0.0.0 to the local host.
        return Refusal("unspecified address not allowed")
    if address.is_loopback:
        return Refusal("loopback address not allowed")
    if address.is_link_local:
        return Refusal("link-local address not allowed")
    if address.is_multicast:
        return Refusal("multicast address not allowed")
    if address == _BROADCAST:
        return Refusal("broadcast address not allowed")
    if address.is_reserved:
        return Refusal("reserved address not allowed")
    if address in policy._own:
        return Refusal("gateway's own address not allowed")
    known = _parse_address(last_source)
    if known is None:
        return Refusal("device source address unknown")
    if address != known:
        return Refusal("address does not match the device's source address")
    return None


def check_http_target(
    url: str,
    *,
    last_source: str | None,
    policy: GuardPolicy,
) -> Refusal | Target:
    """May an HTTP Connection Request go to ``url``?  A normalized :class:`Target` if so.

    ``last_source`` is the address the CPE last connected to the ACS from.
    """
    parsed = _parse_http_url(url, policy.schemes)
    if isinstance(parsed, Refusal):
        return parsed
    target, address = parsed
    refusal = _address_refusal(address, target.port, last_source, policy)
    return refusal if refusal is not None else target


def check_udp_target(
    host: str,
    port: int,
    *,
    last_source: str | None,
    policy: GuardPolicy,
) -> Refusal | Target:
    """May a UDP Connection Request go to ``host``:``port``? A :class:`Target` ("udp") if so.

    ``host`` is an IP literal, bare or bracketed IPv6; the same address rules as HTTP,
    whether the target came from the device's parameters or from its STUN binding.
    """
    if not isinstance(host, str) or len(host) > 64:
        return Refusal("malformed host")
    address = _parse_host(host if host.startswith("[") or ":" not in host else f"[{host}]")
    if isinstance(address, Refusal):
        return address
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return Refusal("invalid port")
    refusal = _address_refusal(address, port, last_source, policy)
    return refusal if refusal is not None else Target("udp", str(address), port, "")
