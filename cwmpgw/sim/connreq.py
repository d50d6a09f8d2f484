"""One connection-request listener for a whole simulated fleet.

A real CPE listens on its own port (7547); five thousand simulated CPEs cannot each have
one. Instead one HTTP port serves them all and each device reports a
``ConnectionRequestURL`` with a random path of its own, ``/cr/<token>``. A request is
checked with HTTP Digest (RFC 7616, MD5 and SHA-256, via :mod:`cwmpgw.web.digest`) against
that device's current ConnectionRequestUsername/Password; a valid one is answered 204
and the device opens a session with ``6 CONNECTION REQUEST`` at once (or right after the
session it is in). The random path keeps one device's credentials from opening another.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Final

from twisted.cred.error import LoginFailed
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from cwmpgw.sim.device import SimDevice
from cwmpgw.web.digest import DigestCredentialFactory

__all__ = ["ConnectionRequestListener"]

_PREFIX: Final = b"/cr/"


class _Site(Site):
    """No access log: thousands of wake-ups a minute are not worth a line each."""

    def log(self, request: Any) -> None:
        pass


class _Resource(Resource):
    isLeaf = True

    def __init__(self, listener: ConnectionRequestListener) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._listener = listener

    def render(self, request: Request) -> bytes:
        return self._listener.handle(request)


class ConnectionRequestListener:
    """The fleet's connection-request endpoint: ``/cr/<token>`` per device, Digest-checked.

    ``on_request`` is called with the device once its request is valid; it must start
    (or queue) the device's ``6 CONNECTION REQUEST`` session.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        on_request: Callable[[SimDevice], None],
        *,
        realm: str = "cwmpgw-sim",
        nonce_lifetime: float = 60.0,
    ) -> None:
        clock: IReactorTime = reactor
        self._reactor: IReactorTCP = reactor
        self._on_request = on_request
        self._digest = DigestCredentialFactory(
            realm, clock=clock, algorithms=("MD5", "SHA-256"), nonce_lifetime=nonce_lifetime
        )
        self._devices: dict[bytes, SimDevice] = {}
        self._port: IListeningPort | None = None
        self.base_url = ""
        self.accepted = 0
        self.refused = 0

    def register(self, device: SimDevice) -> str:
        """A new random path for ``device``; returns its full ConnectionRequestURL."""
        token = secrets.token_urlsafe(12)
        self._devices[token.encode("ascii")] = device
        return f"{self.base_url}/cr/{token}"

    def listen(self, interface: str, port: int, advertise: str | None = None) -> IListeningPort:
        """Start listening; ``advertise`` is the host put in the URLs (default: the address
        bound, which must then be a specific one)."""
        site = _Site(_Resource(self))  # type: ignore[no-untyped-call]
        site.displayTracebacks = False
        factory: Any = site
        self._port = self._reactor.listenTCP(port, factory, interface=interface)
        address: Any = self._port.getHost()
        host = advertise or address.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.base_url = f"http://{host}:{address.port}"
        self._log.info(
            "connection requests accepted on {interface}:{port}, advertised as {url}",
            interface=address.host,
            port=address.port,
            url=self.base_url,
        )
        return self._port

    def stop(self) -> Any:
        """Stop listening (a Deferred, or None if not listening)."""
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None

    def handle(self, request: Request) -> bytes:
        path = request.path
        device = self._devices.get(path[len(_PREFIX) :]) if path.startswith(_PREFIX) else None
        if device is None:
            request.setResponseCode(404)
            return b""
        if request.method not in (b"GET", b"POST"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET")
            return b""
        header = request.getHeader(b"authorization") or b""
        scheme, _, rest = header.partition(b" ")
        stale = False
        if scheme.lower() == b"digest":
            try:
                credentials = self._digest.decode(rest.strip(), request)
                if credentials.username == device.cr_username and credentials.checkPassword(
                    device.cr_password
                ):
                    self.accepted += 1
                    request.setResponseCode(204)
                    self._on_request(device)
                    return b""
                stale = credentials.stale
            except LoginFailed:
                pass
            self.refused += 1
            self._log.debug(
                "refused a connection request for {device_id}", device_id=device.device_id
            )
        for value in self._digest.challenges(stale=stale):
            request.responseHeaders.addRawHeader(b"www-authenticate", value)
        request.setResponseCode(401)
        return b""
