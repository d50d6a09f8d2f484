"""Redis goes away and comes back: nothing hangs, nothing acknowledged is lost or doubled.

In memory (Clock, the real ACS resource and engine): a new session is refused with 503
before any Redis work, a session under way ends cleanly, a store write cannot hang, and
/healthz answers without a round trip. Then the whole gateway over TLS against a
redis-server (AOF on) that the test kills with SIGKILL and starts again on the same port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from lxml import etree
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from cwmpgw.acs.engine import AcsEngine
from cwmpgw.availability import (
    AdmitWhileAvailable,
    RedisAvailability,
    RedisTimeout,
    Unavailable,
)
from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.config import parse_config
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.session import AcsRequest
from cwmpgw.nbi.health import GatewayHealth
from cwmpgw.service import GatewayService, make_service
from cwmpgw.sessions import IRequestSource, LiveSession
from cwmpgw.store.memory import MemoryCredentialStore, MemoryDeviceStore
from cwmpgw.web.digest import ha1
from tests.support import cpe_client
from tests.support import cpe_envelopes as cpe
from tests.support.memhttp import MemoryAcs, OneRequest, digest_post, parse_responses
from tests.support.outage import PASSWORD, KillableRedis, OpenSession
from tests.support.redis_server import unique_prefix
from tests.support.schema import assert_valid

SERIAL_A, SERIAL_B = "22275K2000315", "22275K2000316"
DEVICE_A, DEVICE_B = (f"9CA2F4-EC220_G5_V3-{s}" for s in (SERIAL_A, SERIAL_B))
USER_A, USER_B = "cpe-a", "cpe-b"
MEMORY_DEVICE = "9CA2F4-EC220_G5_V3-22275K2000315"  # the device of tests/support/cpe_envelopes.py


class Switch:
    """A pool seen by RedisAvailability: connected or not, PINGs answered at once."""

    def __init__(self) -> None:
        self.connections = 4

    def availability(self, clock: Clock) -> RedisAvailability:
        a = RedisAvailability(
            lambda: succeed("PONG"), lambda: self.connections, clock=clock, call_timeout=5.0
        )
        a.start()
        return a


class CountingCredentials(MemoryCredentialStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def get(self, username: str) -> Any:
        self.lookups += 1
        return super().get(username)


@implementer(IRequestSource)
class UnreachableQueue:
    """A task queue whose Redis is gone: the guard refuses every call."""

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        return fail(Unavailable("redis is unreachable"))

    def answered(self, session: LiveSession, request: AcsRequest, response: Any) -> Deferred[None]:
        return succeed(None)

    def answer_unusable(
        self, session: LiveSession, request: AcsRequest, reason: str
    ) -> Deferred[None]:
        return succeed(None)

    def transfer_completed(self, session: LiveSession, message: Any) -> Deferred[None]:
        return succeed(None)

    def session_ended(self, session: LiveSession) -> None:
        pass

    def session_starting(self, device_id: str, owner: str | None) -> None:
        pass


class InMemoryOutageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.switch = Switch()

    def acs(self, **kwargs: Any) -> tuple[MemoryAcs, RedisAvailability]:
        clock = Clock()
        holder: dict[str, RedisAvailability] = {}

        class Lazy:
            """The admission asks the availability made below, on the same clock."""

            last_reason = ""

            def admit(self, codes: Any, live: int) -> int | None:
                admission = AdmitWhileAvailable(holder["a"])
                retry = admission.admit(codes, live)
                self.last_reason = admission.last_reason
                return retry

        acs = MemoryAcs(clock=clock, admission=Lazy(), **kwargs)
        holder["a"] = self.switch.availability(clock)
        self.addCleanup(holder["a"].stop)
        acs.add_device(MEMORY_DEVICE, "cpe1", "secret1")
        return acs, holder["a"]

    def test_new_session_refused_with_503_before_any_redis_work(self) -> None:
        credentials = CountingCredentials()
        acs, _ = self.acs(credentials=credentials)
        self.switch.connections = 0
        r = digest_post(acs.connect(secure=True), cpe.inform(), "cpe1", "secret1")
        self.assertEqual(r.status, 503)
        retry = r.header("retry-after")
        assert retry is not None
        self.assertTrue(30 <= int(retry) <= 90)
        self.assertEqual(r.body, b"storage unavailable; retry later\n")
        self.assertEqual(credentials.lookups, 0)  # no credential read, no device write
        self.assertEqual(acs.devices.devices, {})
        self.assertEqual(acs.bus.events, [])

    def test_session_under_way_ends_cleanly_when_the_queue_is_unreachable(self) -> None:
        acs, _ = self.acs(requests=UnreachableQueue())
        conn = acs.connect(secure=True)
        self.assertEqual(digest_post(conn, cpe.inform(), "cpe1", "secret1").status, 200)
        self.switch.connections = 0
        r = conn.post(b"")
        self.assertEqual(r.status, 204)
        closed = acs.bus.of_type("session.closed")
        self.assertEqual([e.data["outcome"] for e in closed], ["completed"])

    def test_an_answer_that_cannot_be_recorded_ends_the_session_with_204(self) -> None:
        class AnswerUnrecordable(OneRequest):
            def answered(self, session: LiveSession, request: AcsRequest, response: object) -> Any:
                self.answers.append(response)
                return fail(Unavailable("redis is unreachable"))

        source = AnswerUnrecordable()
        acs, _ = self.acs(requests=source)
        conn = acs.connect(secure=True)
        self.assertEqual(digest_post(conn, cpe.inform(), "cpe1", "secret1").status, 200)
        self.assertEqual(conn.post(b"").status, 200)  # the ACS's request
        r = conn.post(cpe.rpc_response("GetParameterValues", "acs-1"))
        self.assertEqual((r.status, r.body), (204, b""))  # not a 500
        self.assertEqual(len(source.answers), 1)
        closed = acs.bus.of_type("session.closed")
        self.assertEqual([e.data["outcome"] for e in closed], ["completed"])
        self.assertEqual(acs.engine.registry.sessions(), [])

    def test_transfer_write_cannot_hang_it_times_out_into_fault_8005(self) -> None:
        """Issue 13: the TransferComplete got 8002 Internal error without its cwmp:ID; a
        CPE request that cannot be stored gets 8005 Retry request echoing the ID, and the
        CPE's retry once Redis answers again is stored (and published) once."""
        acs, availability = self.acs()
        conn = acs.connect(secure=True)
        self.assertEqual(digest_post(conn, cpe.inform(), "cpe1", "secret1").status, 200)
        # Redis accepted the connection and never answers (hung, or a partition).
        record_transfer = acs.devices.record_transfer
        acs.devices.record_transfer = lambda *a: availability.guard(  # type: ignore[method-assign]
            lambda: Deferred()
        )
        report = cpe.transfer_complete(request_id="tc-0815")
        conn.transport.clear()
        conn.protocol.dataReceived(_raw_post(report, conn.cookie))
        self.assertEqual(conn.transport.value(), b"")  # waiting for Redis...
        acs.clock.advance(availability.call_timeout)
        (response,) = parse_responses(conn.transport.value())
        self.assertEqual(response.status, 200)
        assert_valid(response.body)
        fault = etree.fromstring(response.body)
        self.assertEqual(fault.findtext(".//{urn:dslforum-org:cwmp-1-2}ID"), "tc-0815")
        self.assertEqual(fault.findtext(".//FaultCode"), "8005")
        self.assertEqual(fault.findtext(".//FaultString"), "Retry request")
        self.assertEqual(acs.bus.of_type("transfer.complete"), [])
        # Logged as one warning, not a traceback: trial fails a test that logs an error.
        self.assertEqual(self.flushLoggedErrors(), [])
        # Redis is back; the CPE retries (TR-069 §3.7.1.6), the same request, twice over.
        acs.devices.record_transfer = record_transfer  # type: ignore[method-assign]
        for _ in range(2):
            again = conn.post(report)
            self.assertEqual(again.status, 200)
            assert_valid(again.body)
            self.assertIn(b"TransferCompleteResponse", again.body)
            self.assertIn(b">tc-0815</cwmp:ID>", again.body)
        self.assertEqual(len(acs.bus.of_type("transfer.complete")), 1)
        self.assertEqual(len(acs.devices.transfers), 1)

    def test_engine_refuses_an_inform_without_touching_the_store(self) -> None:
        clock = Clock()
        availability = self.switch.availability(clock)
        self.addCleanup(availability.stop)
        devices = MemoryDeviceStore()
        engine = AcsEngine(
            clock=clock,
            devices=devices,
            events=MemoryEventBus(),
            node="n1",
            availability=availability,
        )
        self.switch.connections = 0
        envelope = soap.parse_envelope(cpe.inform())
        d = Deferred.fromCoroutine(
            engine.start_session(envelope, peer="192.0.2.1", channel=object(), authenticated_as="u")
        )
        self.failureResultOf(d, Unavailable)
        self.assertEqual(devices.devices, {})
        self.assertEqual(len(engine.registry), 0)

    def test_health_says_redis_down_without_a_round_trip(self) -> None:
        clock = Clock()
        availability = self.switch.availability(clock)
        self.addCleanup(availability.stop)

        class NoPing:
            def ping(self) -> Deferred[str]:
                raise AssertionError("no PING while the pool has no connection")

        class Spool:
            pending = 3

        self.switch.connections = 0
        health = GatewayHealth(
            NoPing(), clock=clock, node="n1", availability=availability, spool=Spool()
        )
        report = self.successResultOf(health.check())
        self.assertEqual(
            (report["ok"], report["redis"], report["events_spooled"]), (False, False, 3)
        )


def _raw_post(body: bytes, cookie: str | None) -> bytes:
    head = (
        "POST / HTTP/1.1\r\nHost: acs.test\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: text/xml\r\n"
        + (f"Cookie: {cookie}\r\n" if cookie else "")
        + "\r\n"
    )
    return head.encode() + body


# -- the real thing --------------------------------------------------------------------------


class GatewayRedisOutageTests(TestCase):
    """Kill -9 the gateway's Redis in the middle of its work, then bring it back."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.redis = KillableRedis()
        self.addCleanup(self.redis.stop)
        await deferToThread(self.redis.start)
        self.dir = tempfile.mkdtemp(prefix="cwmpgw-outage-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        self.service = await self.start_gateway()
        self.cafile = os.path.join(self.dir, "tls", "acs-cert.pem")

    async def start_gateway(self) -> GatewayService:
        config = parse_config(
            {
                "gateway": {"data_dir": self.dir, "node": "outage"},
                "acs": {"port": 0, "interface": "127.0.0.1", "hostname": "localhost"},
                "nbi": {"port": 0, "interface": "127.0.0.1", "auth": "none"},
                "metrics": {"port": 0, "interface": "127.0.0.1"},
                "files": {"port": 0, "interface": "127.0.0.1"},
                "connreq": {"enabled": False},
                "provision": {"credentials": False, "periodic_inform": False},
                "redis": {"url": self.redis.url, "prefix": self.prefix},
            }
        )
        service = make_service(config, reactor)
        assert isinstance(service, GatewayService)
        service.startService()
        await service.whenStarted()
        self.addCleanup(self.stop_gateway, service)
        realm = config.auth.realm
        for device, user in ((DEVICE_A, USER_A), (DEVICE_B, USER_B)):
            hashes = {a: ha1(a, user, realm, PASSWORD) for a in ("MD5", "SHA-256")}
            await service.credentials.set(device, user, hashes)
        assert service.acs_port is not None
        self.url = f"https://127.0.0.1:{service.acs_port.getHost().port}/"
        return service

    async def stop_gateway(self, service: GatewayService) -> None:
        if service.running:
            await service.stopService()

    async def until(self, predicate: Callable[[], bool], what: str, bound: float = 60) -> None:
        """Wait (polling the reactor) for ``predicate``; fail past ``bound`` seconds."""
        deadline = reactor.seconds() + bound
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"still waiting for {what} after {bound}s")
            await deferLater(reactor, 0.05, lambda: None)

    def session(self, user: str, serial: str) -> Deferred[list[cpe_client.Exchange]]:
        return deferToThread(
            cpe_client.run_session, self.url, user, PASSWORD, cafile=self.cafile, serial=serial
        )

    def health(self) -> Deferred[tuple[int, dict[str, Any]]]:
        return self.nbi_get("/healthz")

    def metric_lines(self) -> Deferred[list[str]]:
        port = self.service.metrics_port.getHost().port  # type: ignore[union-attr]

        def get() -> list[str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return [line for line in r.read().decode().splitlines() if line[:1] != "#"]

        return deferToThread(get)

    def nbi_get(self, path: str) -> Deferred[tuple[int, dict[str, Any]]]:
        port = self.service.nbi_port.getHost().port  # type: ignore[union-attr]

        def get() -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        return deferToThread(get)

    def stream(self) -> list[dict[str, Any]]:
        import redis

        client = redis.Redis(self.redis.host, self.redis.port, decode_responses=True)
        try:
            entries = client.xrange(self.prefix + "events")
        finally:
            client.close()
        return [json.loads(fields["event"]) for _, fields in entries]

    def spool_lines(self) -> list[dict[str, Any]]:
        with open(os.path.join(self.dir, "spool", "events.jsonl"), "rb") as f:
            return [json.loads(line)["envelope"] for line in f]

    def flush_outage_errors(self) -> None:
        """What the outage makes other parts log (the auth throttle, the session lock...)."""
        import txredisapi

        self.flushLoggedErrors(Unavailable, RedisTimeout, txredisapi.ConnectionError)

    async def test_outage_refuses_fast_spools_and_recovers_with_each_event_once(self) -> None:
        service = self.service
        first = await self.session(USER_A, SERIAL_A)
        self.assertEqual([e.status for e in first], [200, 204])
        # A session whose Inform was answered, still under way when Redis dies.
        b = OpenSession(self.url, USER_B, self.cafile, SERIAL_B)
        self.addCleanup(b.close)
        self.assertEqual((await deferToThread(b.inform)).status, 200)

        await deferToThread(self.redis.kill)
        await self.until(lambda: not service.availability.available, "the gateway to notice")

        # The session under way: its transfer cannot be stored (fault 8005 Retry request,
        # the CPE keeps it), and it ends cleanly; its session.closed goes to the spool.
        tc = await deferToThread(b.post, cpe_client.TRANSFER_COMPLETE)
        self.assertEqual(tc.status, 200)
        self.assertIn(b"<FaultCode>8005</FaultCode>", tc.body)
        self.assertEqual((await deferToThread(b.post, "")).status, 204)
        await deferToThread(b.close)
        # A new session: answered at once, 503 with Retry-After (the CPE retries later).
        refused = await self.session(USER_A, SERIAL_A)
        self.assertEqual([e.status for e in refused], [503])
        self.assertTrue(refused[0].headers["retry-after"].isdigit())
        status, report = await self.health()
        self.assertEqual((status, report["ok"], report["redis"]), (503, False, False))
        status, body = await self.nbi_get(f"/devices/{DEVICE_A}")
        self.assertEqual((status, body["error"]["code"]), (503, "unavailable"))
        self.assertGreaterEqual(report["events_spooled"], 1)
        metrics = await self.metric_lines()
        self.assertIn("cwmpgw_redis_up 0.0", metrics)
        self.assertIn(f"cwmpgw_events_spooled {float(report['events_spooled'])}", metrics)
        spooled = self.spool_lines()
        self.assertIn(
            ("session.closed", b.session_id),
            [(e["type"], e["data"].get("session_id")) for e in spooled],
        )

        # Redis comes back with its AOF: the gateway reconnects by itself and replays.
        await deferToThread(self.redis.start)
        await self.until(lambda: service.availability.available, "redis to be available again")
        await service.spool.whenDrained().addTimeout(60, reactor)
        self.assertEqual(os.path.getsize(os.path.join(self.dir, "spool", "events.jsonl")), 0)
        events = self.stream()
        ids = [e["id"] for e in events]
        self.assertEqual(len(ids), len(set(ids)))  # nothing twice
        acknowledged = [
            (e["type"], e["device"]["id"], e["data"].get("session_id"))
            for e in events
            if e["type"] in ("device.registered", "inform", "session.closed")
        ]
        session_a = next(e["data"]["session_id"] for e in events if e["type"] == "inform")
        self.assertEqual(
            acknowledged,
            [
                ("device.registered", DEVICE_A, None),
                ("inform", DEVICE_A, session_a),
                ("session.closed", DEVICE_A, session_a),
                ("device.registered", DEVICE_B, None),
                ("inform", DEVICE_B, b.session_id),
                ("session.closed", DEVICE_B, b.session_id),  # from the spool
            ],
        )
        for id_ in [e["id"] for e in spooled]:
            self.assertIn(id_, ids)

        # New sessions work again, and the event listener hears them.
        await service.listener.whenSubscribed().addTimeout(60, reactor)
        heard = service.listener.wait_for(
            lambda e: e["type"] == "inform" and e["device"]["id"] == DEVICE_A, 30
        )
        again = await self.session(USER_A, SERIAL_A)
        self.assertEqual([e.status for e in again], [200, 204])
        event = await heard
        assert event is not None
        self.assertNotIn(event["data"]["session_id"], (session_a, b.session_id))
        status, report = await self.health()
        self.assertEqual((status, report["ok"], report["events_spooled"]), (200, True, 0))
        self.assertIn("cwmpgw_events_spooled 0.0", await self.metric_lines())
        self.flush_outage_errors()

    async def test_spool_survives_a_gateway_restart_during_the_outage(self) -> None:
        b = OpenSession(self.url, USER_B, self.cafile, SERIAL_B)
        self.addCleanup(b.close)
        self.assertEqual((await deferToThread(b.inform)).status, 200)
        await deferToThread(self.redis.kill)
        await self.until(lambda: not self.service.availability.available, "the outage")
        self.assertEqual((await deferToThread(b.post, "")).status, 204)
        await deferToThread(b.close)
        await self.service.stopService()  # must not hang on the dead Redis
        self.assertEqual(
            [(e["type"], e["data"]["session_id"]) for e in self.spool_lines()],
            [("session.closed", b.session_id)],
        )

        await deferToThread(self.redis.start)
        restarted = await self.start_gateway()  # replays the spool at start-up
        await restarted.spool.whenDrained().addTimeout(60, reactor)
        self.assertEqual(
            [(e["type"], e["data"].get("session_id")) for e in self.stream()],
            [
                ("device.registered", None),
                ("inform", b.session_id),
                ("session.closed", b.session_id),
            ],
        )
        self.flush_outage_errors()

    async def test_a_transfer_complete_during_a_stall_gets_8005_and_is_stored_once(self) -> None:
        """Issue 13 with a real redis-server, stopped (SIGSTOP: connected, silent) while a
        CPE reports a finished download: 8005 Retry request echoing its cwmp:ID, not 8002
        without it; the CPE's retry once Redis answers again is stored and published once."""
        a = OpenSession(self.url, USER_A, self.cafile, SERIAL_A)
        self.addCleanup(a.close)
        self.assertEqual((await deferToThread(a.inform)).status, 200)
        process = self.redis.process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        self.addCleanup(lambda: process.poll() is None and os.kill(process.pid, signal.SIGCONT))
        stalled = await deferToThread(a.post, cpe_client.TRANSFER_COMPLETE)
        os.kill(process.pid, signal.SIGCONT)
        self.assertEqual(stalled.status, 200)
        assert_valid(stalled.body)
        fault = etree.fromstring(stalled.body)
        self.assertEqual(fault.findtext(".//{urn:dslforum-org:cwmp-1-2}ID"), "1002")
        self.assertEqual(fault.findtext(".//FaultCode"), "8005")
        await self.until(lambda: self.service.availability.available, "redis to answer again")
        for _ in range(2):  # the CPE's retry, and a retry of that (its answer lost, say)
            retried = await deferToThread(a.post, cpe_client.TRANSFER_COMPLETE)
            self.assertEqual(retried.status, 200)
            assert_valid(retried.body)
            self.assertIn(b"TransferCompleteResponse", retried.body)
            self.assertIn(b">1002</cwmp:ID>", retried.body)
        self.assertEqual((await deferToThread(a.post, "")).status, 204)
        await self.service.spool.whenDrained().addTimeout(60, reactor)
        await self.until(
            lambda: any(e["type"] == "session.closed" for e in self.stream()), "session.closed"
        )
        reports = [e for e in self.stream() if e["type"] == "transfer.complete"]
        self.assertEqual([e["data"]["command_key"] for e in reports], ["fw-42"])
        self.flush_outage_errors()
