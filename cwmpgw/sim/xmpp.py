"""Simulated CPEs as XMPP clients (TR-069 Annex K), one XMPP session per device.

Each device logs in to the XMPP server with an account of its own (resource ``cwmp``),
publishes the JID it got in ``ManagementServer.ConnReqJabberID`` (a forced inform
parameter) and lists XMPP in ``SupportedConnReqMethods``. A ``connectionRequest`` IQ is
answered as Annex K says:

* from a JID not allowed by ``ManagementServer.ConnReqAllowedJabberIDs`` (a full JID
  matches exactly, a bare JID any resource, an empty list everyone): ``service-unavailable``;
* with a username/password other than ConnectionRequestUsername/Password: ``not-authorized``;
* otherwise a ``result``, and the device opens a session with ``6 CONNECTION REQUEST``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.words.xish import domish

from cwmpgw.sim.device import SimDevice
from cwmpgw.xmpp.annexk import NS_CONNREQ, jid_allowed, parse_connection_request
from cwmpgw.xmpp.client import StanzaError, XmppClient

__all__ = ["XmppCpes", "XmppSettings"]


@dataclass(frozen=True)
class XmppSettings:
    """Where the fleet's CPEs log in. ``account(device)`` gives (user, password) on
    ``domain``; ``tls`` is the client TLS options (trust root and expected name)."""

    host: str
    port: int
    domain: str
    tls: Any
    account: Callable[[SimDevice], tuple[str, str]]
    resource: str = "cwmp"
    allowed_jids: str = ""  # the initial ConnReqAllowedJabberIDs
    retry_max: float = 5.0


class XmppCpes:
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: XmppSettings,
        on_request: Callable[[SimDevice], None],
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._on_request = on_request
        self.clients: dict[str, XmppClient] = {}
        self.accepted = 0
        self.refused = 0

    async def start(self, devices: list[SimDevice], timeout: float = 30.0) -> None:
        """Log every device in; fails if one is not logged in within ``timeout``."""
        s = self._settings
        for device in devices:
            user, password = s.account(device)
            client = XmppClient(
                self._reactor,
                f"{user}@{s.domain}/{s.resource}",
                password,
                host=s.host,
                port=s.port,
                tls=s.tls,
                retry_min=0.5,
                retry_max=s.retry_max,
                presence=True,
            )
            client.handle_iq(NS_CONNREQ, "connectionRequest", self._handler(device))
            ms = device.ms
            device.model.set(ms + "ConnReqJabberID", f"{user}@{s.domain}/{s.resource}")
            methods = device.model.value(ms + "SupportedConnReqMethods", "HTTP")
            if "XMPP" not in methods.split(","):
                device.model.set(ms + "SupportedConnReqMethods", methods + ",XMPP")
            if s.allowed_jids:
                device.model.set(ms + "ConnReqAllowedJabberIDs", s.allowed_jids)
            self.clients[device.device_id] = client
            client.start()
        ready = await gatherResults(
            [c.when_ready(timeout) for c in self.clients.values()], consumeErrors=True
        )
        if not all(ready):
            raise RuntimeError("some simulated CPEs could not log in to the XMPP server")

    async def stop(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        await gatherResults([c.stop() for c in clients], consumeErrors=True)

    def _handler(self, device: SimDevice) -> Callable[[domish.Element], None]:
        return lambda iq: self._connection_request(device, iq)

    def _connection_request(self, device: SimDevice, iq: domish.Element) -> None:
        allowed = device.model.value(device.ms + "ConnReqAllowedJabberIDs")
        if not jid_allowed(iq.getAttribute("from"), allowed):
            self.refused += 1
            raise StanzaError("service-unavailable", "cancel")
        payload = iq.firstChildElement()
        given = parse_connection_request(payload) if payload is not None else None
        if given is None:
            self.refused += 1
            raise StanzaError("bad-request", "modify")
        username, password = given
        ok_user = hmac.compare_digest(username.encode(), device.cr_username.encode())
        ok_password = hmac.compare_digest(password.encode(), device.cr_password.encode())
        if not (ok_user and ok_password and device.cr_username):
            self.refused += 1
            raise StanzaError("not-authorized", "auth")
        self.accepted += 1
        self._on_request(device)
