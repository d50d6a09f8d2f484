"""The XMPP part (TR-069 Annex K): the gateway's own XMPP login, kept up with back-off,
and the requester that ``wake(device)`` uses for devices that report a ConnReqJabberID.

Starting does not wait for the login: the gateway serves CPEs while the XMPP server is
away, and a wake-up meanwhile falls back to HTTP/UDP (``unreachable`` if XMPP was all).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.logger import Logger

from cwmpgw.app.tree import Part
from cwmpgw.config import Config
from cwmpgw.connreq.xmpp import XmppConnectionRequester
from cwmpgw.xmpp.client import XmppClient

__all__ = ["XmppPart", "tls_options"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def tls_options(hostname: str, cafile: str) -> Any:
    """Client TLS that checks the server's certificate names ``hostname`` and chains to
    ``cafile``'s certificates (or the system's trust roots when it is "")."""
    if not cafile:
        return ssl.optionsForClientTLS(hostname)
    with open(cafile, "rb") as f:
        certificates = [ssl.Certificate.loadPEM(block) for block in _PEM.findall(f.read())]
    if not certificates:
        raise ValueError(f"no PEM certificate in {cafile}")
    return ssl.optionsForClientTLS(hostname, trustRoot=ssl.trustRootFromCertificates(certificates))


class XmppPart(Part):
    """Started: ``client`` is logging in (and stays logged in); ``requester`` sends."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        self.name = "xmpp"
        cfg = config.xmpp
        self.client = XmppClient(
            reactor,
            cfg.jid,
            cfg.password,
            host=cfg.server or cfg.domain,
            port=cfg.port,
            tls=tls_options(cfg.tls_hostname or cfg.domain, cfg.cafile),
            connect_timeout=cfg.connect_timeout,
            retry_min=cfg.retry_min,
            retry_max=cfg.retry_max,
            keepalive=cfg.keepalive,
        )
        self.requester = XmppConnectionRequester(
            self.client,
            own_jid=cfg.jid,
            timeout=cfg.timeout,
            connect_wait=min(cfg.connect_timeout, cfg.timeout),
            allowed_domains=cfg.allowed_domains,
        )

    async def start(self) -> None:
        self.client.start()

    async def stop(self) -> None:
        await self.client.stop()
