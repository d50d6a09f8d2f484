"""Connection requests end to end on loopback: HTTP Digest, STUN + UDP, and the guard.

The CPE here is scripted apart from the gateway's code: its connection-request listener
checks Digest with hashlib, its UDP receiver checks the Annex G signature with hmac, and
its CWMP session is tests/support/cpe_client.py (http.client + ssl).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from cwmpgw.connreq import stun
from cwmpgw.service import GatewayService
from tests.support import cpe_client
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.redis_server import unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = "acs-user", "acs-password-1"
CR_USER, CR_PASSWORD = "cr-user", "cr-password-9"


class ConnectionRequestListener(Resource):
    """The CPE's HTTP connection-request endpoint, Digest-protected (RFC 7616, MD5)."""

    isLeaf = True

    def __init__(self, on_wake: Any) -> None:
        super().__init__()
        self.on_wake = on_wake
        self.requests: list[tuple[str, bool]] = []  # (source address, authorized)
        self.nonce = os.urandom(8).hex()

    def render_GET(self, request: Any) -> bytes:
        header = (request.getHeader(b"authorization") or b"").decode()
        ok = self._valid(header, request.uri.decode())
        self.requests.append((request.getClientAddress().host, ok))
        if not ok:
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                f'Digest realm="cpe", qop="auth", nonce="{self.nonce}"'.encode(),
            )
            return b""
        request.setResponseCode(204)
        reactor.callLater(0, self.on_wake)
        return b""

    def _valid(self, header: str, uri: str) -> bool:
        if not header.startswith("Digest "):
            return False
        p = dict(re.findall(r'(\w+)="?([^",]*)"?', header))

        def md5(s: str) -> str:
            return hashlib.md5(s.encode()).hexdigest()

        if p.get("username") != CR_USER or p.get("nonce") != self.nonce or p.get("uri") != uri:
            return False
        ha1, ha2 = md5(f"{CR_USER}:cpe:{CR_PASSWORD}"), md5(f"GET:{uri}")
        expected = md5(f"{ha1}:{self.nonce}:{p.get('nc')}:{p.get('cnonce')}:auth:{ha2}")
        return hmac.compare_digest(expected, p.get("response", ""))


class UdpReceiver(DatagramProtocol):
    """The CPE's UDP connection-request port, also its STUN client port (Annex G)."""

    def __init__(self, on_wake: Any) -> None:
        self.on_wake = on_wake
        self.stun_answers: list[stun.StunMessage] = []
        self.requests: list[tuple[tuple[str, int], bool]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b"GET "):
            self.requests.append((addr, self._valid(data)))
            if self._valid(data) and len(self.requests) == 1:
                reactor.callLater(0, self.on_wake)
            return
        self.stun_answers.append(stun.parse(data))

    @staticmethod
    def _valid(data: bytes) -> bool:
        target = data.split(b"\r\n")[0].split(b" ")[1].decode()
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
        text = q["ts"] + q["id"] + q["un"] + q["cn"]
        expected = hmac.new(CR_PASSWORD.encode(), text.encode(), hashlib.sha1).hexdigest()
        return q["un"] == CR_USER and hmac.compare_digest(expected, q["sig"].lower())


@pytest.mark.usefixtures("redis_for_class")
class ConnectionRequestTests(TestCase):
    redis_server: Any

    async def start_gateway(self, **connreq: Any) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-cr-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        settings = {"stun": True, "session_wait": 10.0, "min_interval": 0.0, "retries": 0}
        service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            gateway={"node": "cr-node"},
            connreq=settings | connreq,
            provision={"credentials": True, "periodic_inform": True},  # as shipped
        )
        self.url = acs_url(service)
        self.cafile = cafile(self.dir)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        await import_into(
            self,
            "device_id,username,password,cr_username,cr_password\n"
            f"{DEVICE_ID},{USER},{PASSWORD},{CR_USER},{CR_PASSWORD}\n",
            self.dir,
            self.redis_server.url,
            self.prefix,
        )
        self.assertNotIn(
            CR_PASSWORD, json.dumps(self.redis.hgetall(self.prefix + "crcred:" + DEVICE_ID))
        )
        return service

    def session(self, event: str, cr_url: str) -> Deferred[list[cpe_client.Exchange]]:
        d: Deferred[list[cpe_client.Exchange]] = deferToThread(
            cpe_client.run_session,
            self.url,
            USER,
            PASSWORD,
            cafile=self.cafile,
            event=event,
            cr_url=cr_url,
        )
        return d

    def stream_types(self) -> list[str]:
        return [
            json.loads(f["event"])["type"] for _, f in self.redis.xrange(self.prefix + "events")
        ]

    async def http_cpe(self) -> tuple[ConnectionRequestListener, str, list[Deferred[Any]]]:
        sessions: list[Deferred[Any]] = []
        listener = ConnectionRequestListener(
            lambda: sessions.append(self.session("6 CONNECTION REQUEST", cr_url))
        )
        port = reactor.listenTCP(0, Site(listener), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        async def settle() -> None:
            # Sessions a wake-up started that the test did not wait for end before the
            # gateway stops (cleanups run last first): a CPE thread cut mid-handshake by
            # the stop would fail later, in whichever test runs then.
            for d in sessions:
                try:
                    await d
                except Exception:
                    pass

        self.addCleanup(settle)
        cr_url = f"http://127.0.0.1:{port.getHost().port}/cr-{os.urandom(4).hex()}"
        return listener, cr_url, sessions

    async def test_http_digest_wake_up_opens_a_session(self) -> None:
        service = await self.start_gateway(allowed_networks=["127.0.0.0/8"], sent_events=True)
        listener, cr_url, sessions = await self.http_cpe()
        boot = await self.session("1 BOOT", cr_url)
        self.assertEqual(boot[-1].status, 204)

        result = await service.connreq.wake(DEVICE_ID)
        self.assertEqual(
            (result.outcome, result.method, result.session_started), ("ok", "http", True)
        )
        self.assertEqual(listener.requests, [("127.0.0.1", False), ("127.0.0.1", True)])
        exchanges = await sessions[0]
        self.assertEqual(exchanges[-1].status, 204)
        await service.engine.flush()  # the background events (session.closed) are out
        events = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        marks = [
            e["data"]["events"][0]["code"] if e["type"] == "inform" else e["type"] for e in events
        ]
        # The request went out before the CPE's "6 CONNECTION REQUEST" session began.
        self.assertLess(marks.index("connreq.sent"), marks.index("6 CONNECTION REQUEST"))
        self.assertEqual(marks.count("session.closed"), 2)
        self.assertEqual(marks.count("connreq.succeeded"), 1)
        self.assertNotIn(CR_PASSWORD, json.dumps(self.redis.xrange(self.prefix + "events")))

    async def test_one_event_per_wake_up_and_the_interval_claimed_with_the_reads(self) -> None:
        """By default a wake-up publishes one event, which names method, target and
        attempts; the reads and the interval claim are one script: a second wake-up within
        ``min_interval`` is busy, and a wake-up that cannot send claims nothing."""
        service = await self.start_gateway(
            allowed_networks=["127.0.0.0/8"], session_wait=0.0, min_interval=30.0
        )
        listener, cr_url, _ = await self.http_cpe()
        self.assertEqual((await service.connreq.wake(DEVICE_ID)).outcome, "refused")  # unknown
        self.assertFalse(self.redis.exists(f"{self.prefix}connreq:recent:{DEVICE_ID}"))
        await self.session("1 BOOT", cr_url)
        await service.engine.flush()  # the session's background events (session.closed)
        before = len(self.stream_types())
        result = await service.connreq.wake(DEVICE_ID)
        self.assertEqual((result.outcome, result.method), ("ok", "http"))
        self.assertTrue(self.redis.exists(f"{self.prefix}connreq:recent:{DEVICE_ID}"))
        self.assertEqual((await service.connreq.wake(DEVICE_ID)).outcome, "busy")
        self.assertEqual(len(listener.requests), 2)  # the 401 and the authorised GET, once
        entries = self.redis.xrange(self.prefix + "events")[before:]
        # The session the wake-up opened may be under way: its events are not the wake-up's.
        events = [json.loads(f["event"]) for _, f in entries]
        events = [e for e in events if e["type"].startswith("connreq.")]
        self.assertEqual([e["type"] for e in events], ["connreq.succeeded"])
        self.assertEqual(
            (events[0]["data"]["method"], events[0]["data"]["target"]),
            ("http", cr_url),
        )
        self.assertEqual(events[0]["data"]["attempts"], 1)

    async def test_guard_refuses_loopback_by_default(self) -> None:
        service = await self.start_gateway()
        listener, cr_url, sessions = await self.http_cpe()
        await self.session("1 BOOT", cr_url)
        result = await service.connreq.wake(DEVICE_ID)
        self.assertEqual(result.outcome, "refused")
        self.assertEqual(listener.requests, [])  # nothing was sent
        self.assertEqual(sessions, [])
        self.assertIn("connreq.refused", self.stream_types())

    async def test_stun_binding_and_udp_wake_up(self) -> None:
        service = await self.start_gateway(allowed_networks=["127.0.0.0/8"], prefer="udp")
        sessions: list[Deferred[Any]] = []
        receiver = UdpReceiver(lambda: sessions.append(self.session("6 CONNECTION REQUEST", "")))
        port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.session("1 BOOT", "")  # no HTTP URL at all: UDP is the only way

        stun_port = service.stun_port.getHost().port
        key = f"{self.prefix}stun:{DEVICE_ID}"

        async def bind(integrity_key: bytes | None) -> stun.StunMessage:
            request = stun.StunMessage(
                stun.BINDING,
                stun.CLASS_REQUEST,
                os.urandom(12),
                (
                    (stun.USERNAME, stun.encode_username(DEVICE_ID)),
                    (stun.CONNECTION_REQUEST_BINDING, stun.CONNECTION_REQUEST_BINDING_VALUE),
                ),
                True,
            )
            receiver.stun_answers.clear()
            port.write(stun.build(request, integrity_key=integrity_key), ("127.0.0.1", stun_port))
            for _ in range(100):  # bounded: the binding is written right after the answer
                if receiver.stun_answers and (
                    receiver.stun_answers[0].cls == stun.CLASS_ERROR or self.redis.exists(key)
                ):
                    break
                await deferLater(reactor, 0.05, lambda: None)
            return receiver.stun_answers[0]

        # The STUN password the enrolment session would have set (test_provisioning).
        await service.connreq_credentials.set_stun_pending(DEVICE_ID, "stun-password-1")
        await service.connreq_credentials.promote_stun(DEVICE_ID)
        # Unsigned (anyone can send it) and wrongly signed bindings change nothing.
        for wrong in (None, b"guessed-password"):
            self.assertEqual((await bind(wrong)).cls, stun.CLASS_ERROR)
            self.assertFalse(self.redis.exists(key))
        self.assertEqual((await bind(b"stun-password-1")).cls, stun.CLASS_SUCCESS)
        self.assertEqual(json.loads(self.redis.get(key))["port"], port.getHost().port)

        result = await service.connreq.wake(DEVICE_ID)
        self.assertEqual(
            (result.outcome, result.method, result.session_started), ("ok", "udp", True)
        )
        self.assertTrue(receiver.requests)
        for source, valid in receiver.requests:
            self.assertEqual(source, ("127.0.0.1", stun_port))  # sent from the STUN port
            self.assertTrue(valid)
        self.assertEqual((await sessions[0])[-1].status, 204)
