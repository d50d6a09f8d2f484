"""XMPP connection requests (TR-069 Annex K) end to end, through a real Prosody.

The gateway logs in to Prosody over STARTTLS (the server's certificate checked against
the test CA), the simulator's CPEs are XMPP clients of the same server, and a wake-up
is a connectionRequest IQ from the gateway's JID to the CPE's ConnReqJabberID, answered
by the CPE and followed by its "6 CONNECTION REQUEST" session.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cwmpgw.app.xmpp import tls_options
from cwmpgw.service import GatewayService
from cwmpgw.sim import Fleet, Rate, SimDevice, credential_templates
from cwmpgw.sim.xmpp import XmppSettings
from tests.support.certfactory import CertAuthority
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.redis_server import unique_prefix


@pytest.mark.usefixtures("redis_for_class", "prosody_for_class")
class XmppConnectionRequestTests(TestCase):
    redis_server: Any
    prosody: Any

    async def start_gateway(self, **xmpp: Any) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-xmpp-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        self.tag = secrets.token_hex(4)
        self.acs_user = f"acs-{self.tag}"
        self.acs_jid = self.prosody.add_account(self.acs_user, "acs-xmpp-pw")
        settings = {
            "enabled": True,
            "jid": self.acs_jid + "/gateway",
            "password": "acs-xmpp-pw",
            "server": self.prosody.host,
            "port": self.prosody.port,
            "cafile": self.prosody.cafile,
            "tls_hostname": self.prosody.domain,
            "timeout": 5.0,
            "connect_timeout": 5.0,
            "retry_min": 0.2,
            "retry_max": 1.0,
        }
        service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            gateway={"node": "xmpp-node"},
            connreq={"min_interval": 0.0, "retries": 0, "session_wait": 10.0, "stun": False},
            provision={"credentials": True, "periodic_inform": False},
            xmpp=settings | xmpp,
        )
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        return service

    async def start_fleet(self, devices: int = 2, allowed: str | None = None) -> Fleet:
        tag = self.tag

        def account(device: SimDevice) -> tuple[str, str]:
            user = f"cpe-{tag}-{device.index}"
            password = f"cpe-pw-{device.index}"
            self.prosody.add_account(user, password)
            return user, password

        settings = XmppSettings(
            host=self.prosody.host,
            port=self.prosody.port,
            domain=self.prosody.domain,
            tls=tls_options(self.prosody.domain, self.prosody.cafile),
            account=account,
            allowed_jids=self.acs_jid if allowed is None else allowed,
            retry_max=1.0,
        )
        fleet = Fleet(
            reactor,
            acs_url(self.service),
            devices=devices,
            credentials=credential_templates("{device_id}", "{serial}-Zq6-secret"),
            cafile=cafile(self.dir),
            arrival=Rate(None),
            xmpp=settings,
            seed=2,
        )
        await fleet.start()
        self.addCleanup(fleet.stop)
        await import_into(
            self, fleet.credentials_csv(), self.dir, self.redis_server.url, self.prefix
        )
        stats = await fleet.run_sessions(count=devices)
        self.assertEqual((stats.completed, dict(stats.failures)), (devices, {}))
        return fleet

    def events(self, type_: str) -> list[dict[str, Any]]:
        out = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in out if e["type"] == type_]

    async def test_a_cpe_is_woken_through_the_xmpp_server(self) -> None:
        self.service = await self.start_gateway()
        assert self.service.xmpp is not None
        self.assertTrue(await self.service.xmpp.client.when_ready(10))
        fleet = await self.start_fleet()
        device = fleet.devices[1]
        jid = f"cpe-{self.tag}-1@localhost/cwmp"
        # Learned from the Inform (a forced parameter of XMPP-capable CPEs).
        stored = self.redis.hget(
            f"{self.prefix}device:{device.device_id}:params",
            "Device.ManagementServer.ConnReqJabberID",
        )
        self.assertEqual(json.loads(stored or "[]")[0], jid)
        # No ConnectionRequestURL at all: XMPP is the only way in.
        self.assertEqual(device.cr_url, "")

        following = fleet.next_session(device)
        assert self.service.connreq is not None
        outcome = await self.service.connreq.wake(device.device_id)
        self.assertEqual(
            (outcome.outcome, outcome.method, outcome.session_started), ("ok", "xmpp", True)
        )
        session = await following
        self.assertEqual((session.ok, session.events), (True, ("6 CONNECTION REQUEST",)))
        assert fleet.xmpp is not None
        self.assertEqual((fleet.xmpp.accepted, fleet.xmpp.refused), (1, 0))
        # One event per wake-up by default (connreq.sent is opt-in): the result says where.
        self.assertEqual(self.events("connreq.sent"), [])
        (succeeded,) = self.events("connreq.succeeded")
        self.assertEqual(
            {k: succeeded["data"][k] for k in ("method", "target", "attempts")},
            {"method": "xmpp", "target": jid, "attempts": 1},
        )
        # The credentials travel only inside the IQ: never in an event.
        everything = json.dumps(self.redis.xrange(self.prefix + "events"))
        self.assertNotIn(device.cr_password, everything)

    async def test_the_cpes_refusals_are_outcomes(self) -> None:
        self.service = await self.start_gateway()
        assert self.service.connreq is not None and self.service.xmpp is not None
        # Device 0 allows only another JID; device 1 has other credentials than the
        # gateway's; device 2 goes offline.
        fleet = await self.start_fleet(devices=3, allowed="someone-else@localhost")
        d0, d1, d2 = fleet.devices
        d1.model.set(d1.ms + "ConnReqAllowedJabberIDs", self.acs_jid)
        d1.model.set(d1.ms + "ConnectionRequestPassword", "not-what-the-gateway-has")
        assert fleet.xmpp is not None
        await fleet.xmpp.clients.pop(d2.device_id).stop()

        r0 = await self.service.connreq.wake(d0.device_id)
        self.assertEqual((r0.outcome, r0.method), ("unreachable", "xmpp"))
        self.assertIn("service-unavailable", r0.detail)
        r1 = await self.service.connreq.wake(d1.device_id)
        self.assertEqual((r1.outcome, r1.method), ("auth_failed", "xmpp"))
        r2 = await self.service.connreq.wake(d2.device_id)
        self.assertEqual((r2.outcome, r2.method), ("unreachable", "xmpp"))
        self.assertEqual((fleet.xmpp.accepted, fleet.xmpp.refused), (0, 2))
        failed = [e["data"]["outcome"] for e in self.events("connreq.failed")]
        self.assertEqual(failed, ["unreachable", "auth_failed", "unreachable"])

    async def test_the_gateway_logs_in_again_after_losing_its_stream(self) -> None:
        self.service = await self.start_gateway()
        assert self.service.xmpp is not None and self.service.connreq is not None
        client = self.service.xmpp.client
        self.assertTrue(await client.when_ready(10))
        fleet = await self.start_fleet(devices=1)
        stream: Any = client._stream
        stream.transport.abortConnection()
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(client.ready)
        self.assertTrue(await client.when_ready(10))  # back-off of 0.2 s, then a new login
        self.assertEqual(client.connects, 2)
        outcome = await self.service.connreq.wake(fleet.devices[0].device_id)
        self.assertEqual((outcome.outcome, outcome.session_started), ("ok", True))

    async def test_a_server_certificate_from_another_ca_is_refused(self) -> None:
        other = tempfile.mkdtemp(prefix="cwmpgw-xmpp-ca-")
        self.addCleanup(shutil.rmtree, other, True)
        wrong_ca = CertAuthority("Not the XMPP server's CA").write(other)
        self.service = await self.start_gateway(cafile=wrong_ca)
        assert self.service.xmpp is not None
        self.assertFalse(await self.service.xmpp.client.when_ready(1.5))
        self.assertEqual(self.service.xmpp.client.connects, 0)
