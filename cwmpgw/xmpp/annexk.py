"""The Annex K connectionRequest stanza (cwmp-xmppConnReq-1-0.xsd) and the CPE's rule
for allowed senders (``ManagementServer.ConnReqAllowedJabberIDs``)."""

from __future__ import annotations

from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish

__all__ = ["NS_CONNREQ", "connection_request", "jid_allowed", "parse_connection_request"]

NS_CONNREQ = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0"


def connection_request(username: str, password: str) -> domish.Element:
    """``<connectionRequest xmlns=...><username/><password/></connectionRequest>``."""
    element = domish.Element((NS_CONNREQ, "connectionRequest"))
    element.addElement("username", content=username)
    element.addElement("password", content=password)
    return element


def parse_connection_request(payload: domish.Element) -> tuple[str, str] | None:
    """(username, password) of a connectionRequest element, None if it is not one."""
    if (payload.uri, payload.name) != (NS_CONNREQ, "connectionRequest"):
        return None
    found: dict[str, str] = {}
    for child in payload.elements():
        if child.uri == NS_CONNREQ and child.name in ("username", "password"):
            if child.name in found:
                return None
            found[child.name] = str(child)
    if set(found) != {"username", "password"}:
        return None
    return found["username"], found["password"]


def jid_allowed(sender: str | None, allowed: str) -> bool:
    """TR-181 ConnReqAllowedJabberIDs: a comma-separated list; a full JID matches exactly,
    a bare JID any of its resources; an empty list allows every sender."""
    entries = [e.strip() for e in allowed.split(",") if e.strip()]
    if not entries:
        return True
    if sender is None:
        return False
    try:
        who = JID(sender)
    except InvalidFormat:
        return False
    for entry in entries:
        try:
            rule = JID(entry)
        except InvalidFormat:
            continue
        if rule.resource is None:
            if rule.userhost() == who.userhost():
                return True
        elif rule.full() == who.full():
            return True
    return False
