"""XMPP connection requests (TR-069 Annex K): one IQ through the gateway's XMPP stream.

The gateway sends ``<iq type="get" to="<ConnReqJabberID>"><connectionRequest
xmlns="urn:broadband-forum-org:cwmp:xmppConnReq-1-0">`` with the device's
connection-request username and password. The CPE answers a ``result`` IQ (it will open
a session with "6 CONNECTION REQUEST"), ``not-authorized`` (wrong credentials) or
``service-unavailable`` (it refuses our JID, see ConnReqAllowedJabberIDs — which is also
what the server answers for a CPE that is offline).

The password is inside the stanza, readable by the XMPP server: so the request goes only
to JIDs on domains the operator allows (the gateway's own by default), never to whatever
server a device names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.words.protocols.jabber.jid import JID, InvalidFormat

from cwmpgw.xmpp.annexk import connection_request
from cwmpgw.xmpp.client import NotConnected, StanzaError

__all__ = ["XmppAttempt", "XmppConnectionRequester"]

_OFFLINE = frozenset(
    {
        "service-unavailable",
        "recipient-unavailable",
        "item-not-found",
        "remote-server-not-found",
        "remote-server-timeout",
        "gone",
    }
)


@dataclass(frozen=True, slots=True)
class XmppAttempt:
    outcome: str  # one of connreq.interfaces.OUTCOMES
    detail: str = ""


class XmppConnectionRequester:
    """``request(jid, username, password)`` over an :class:`cwmpgw.xmpp.client.XmppClient`."""

    def __init__(
        self,
        client: Any,
        *,
        own_jid: str,
        timeout: float,
        connect_wait: float,
        allowed_domains: tuple[str, ...] = (),
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._connect_wait = connect_wait
        own_domain = JID(own_jid).host
        self._domains = frozenset(allowed_domains or (own_domain,))

    def check_target(self, jid: str) -> str | None:
        """Why a request may not go to ``jid``, or None if it may."""
        try:
            target = JID(jid.strip())
        except InvalidFormat:
            return "ConnReqJabberID is not a valid JID"
        if target.user is None:
            return "ConnReqJabberID has no user part"
        if target.host not in self._domains:
            return f"ConnReqJabberID's domain {target.host} is not in xmpp.allowed_domains"
        return None

    def request(self, jid: str, username: str, password: str) -> Deferred[XmppAttempt]:
        return Deferred.fromCoroutine(self._request(JID(jid.strip()).full(), username, password))

    async def _request(self, jid: str, username: str, password: str) -> XmppAttempt:
        if not await self._client.when_ready(self._connect_wait):
            return XmppAttempt("unreachable", "the gateway is not logged in to its XMPP server")
        try:
            await self._client.send_iq(jid, connection_request(username, password), self._timeout)
        except StanzaError as e:
            condition = e.condition or "unknown"
            if condition == "not-authorized":
                return XmppAttempt("auth_failed", "not-authorized: the CPE refused the credentials")
            if condition in _OFFLINE:
                return XmppAttempt(
                    "unreachable",
                    f"{condition}: the CPE is offline, or does not accept requests from the "
                    "gateway's JID (ConnReqAllowedJabberIDs)",
                )
            if condition == "resource-constraint":
                return XmppAttempt("busy", condition)
            return XmppAttempt("error", f"XMPP error: {condition}")
        except NotConnected:
            return XmppAttempt("unreachable", "the XMPP stream ended before the CPE answered")
        except (TimeoutError, CancelledError):
            return XmppAttempt("timeout", f"no answer within {self._timeout:g} s")
        return XmppAttempt("ok", "the CPE accepted the XMPP connection request")
