"""Zero-touch credentials over real TLS: enrol, switch safely, rotate; no secret leaks.

The CPE is tests/support/cpe_client.py. In the ACS's turn it applies what the gateway sets, as a
router does: the new ManagementServer.Username/Password are used from its next session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from lxml import etree
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support import cpe_client
from tests.support.cpe_envelopes import cpe_fault, typical_response
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.redis_server import unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
BOOTSTRAP_USER, BOOTSTRAP_PASSWORD = "bootstrap", "shared-bootstrap-secret-1"
BOOTSTRAP_CREDENTIAL = (BOOTSTRAP_USER, BOOTSTRAP_PASSWORD)


MS = "Device.ManagementServer."
# A TR-181 ManagementServer as routers have it (name -> writable), and one other value.
DATA_MODEL = {
    **{
        MS + name: writable
        for name, writable in (
            ("EnableCWMP", True),
            ("URL", True),
            ("Username", True),
            ("Password", True),
            ("PeriodicInformEnable", True),
            ("PeriodicInformInterval", True),
            ("PeriodicInformTime", True),
            ("ParameterKey", False),
            ("ConnectionRequestURL", False),
            ("ConnectionRequestUsername", True),
            ("ConnectionRequestPassword", True),
            ("UpgradesManaged", True),
            ("CWMPRetryMinimumWaitInterval", True),
            ("CWMPRetryIntervalMultiplier", True),
            ("STUNEnable", True),
            ("STUNServerAddress", True),
            ("STUNUsername", True),
            ("STUNPassword", True),
        )
    },
    "Device.Time.NTPServer1": True,
}


SPV = "SetParameterValues"
ENROLMENT = [SPV, SPV, "GetParameterNames", SPV]


class ApplyingCpe:
    """Answers the gateway's requests as a router with :data:`DATA_MODEL` does: it
    applies a SetParameterValues whole or not at all (fault 9003 naming each parameter
    it lacks, 9005, or cannot write, 9008), and lists its parameters on
    GetParameterNames."""

    def __init__(
        self,
        *,
        fault: int | None = None,
        drop: bool = False,
        stun: bool = True,
        lacks: tuple[str, ...] = (),
        drop_on: str | None = None,
    ) -> None:
        self.values: dict[str, str] = {}
        self.methods: list[str] = []
        self.sets: list[list[str]] = []  # the names of every SetParameterValues received
        self.fault = fault
        self.drop = drop
        self.drop_on = drop_on  # drop the session on a SetParameterValues of this name
        self.model = {
            n: w
            for n, w in DATA_MODEL.items()
            if n not in lacks and (stun or ".ManagementServer.STUN" not in n)
        }

    def __call__(self, envelope: bytes) -> str:
        root = etree.fromstring(envelope)
        request = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")[0]
        method = etree.QName(request).localname
        request_id = root.find(".//{urn:dslforum-org:cwmp-1-2}ID").text
        self.methods.append(method)
        if self.drop:
            raise ConnectionAbortedError("the CPE loses power mid-session")
        if self.fault is not None and method == "SetParameterValues":
            return cpe_fault(
                request_id, self.fault, "Attempt to set a non-writable parameter"
            ).decode()
        if method == "GetParameterNames":
            path = request.findtext("ParameterPath") or ""
            next_level = request.findtext("NextLevel") in ("1", "true")
            names = [
                (n, w)
                for n, w in self.model.items()
                if n.startswith(path) and not (next_level and "." in n[len(path) :])
            ]
            return typical_response(method, request_id, parameters=names).decode()
        if method == "SetParameterValues":
            values = {
                pvs.findtext("Name"): pvs.findtext("Value") or ""
                for pvs in request.iter("ParameterValueStruct")
            }
            self.sets.append(list(values))
            if self.drop_on in values:
                raise ConnectionAbortedError("a poor fault handler: the CPE drops the session")
            refused = [
                (n, 9005, "Invalid parameter name")
                if n not in self.model
                else (n, 9008, "Attempt to set a non-writable parameter")
                for n in values
                if not self.model.get(n)
            ]
            if refused:
                return cpe_fault(request_id, 9003, "Invalid arguments", refused).decode()
            self.values.update(values)
        return typical_response(method, request_id).decode()

    def credential(self) -> tuple[str, str]:
        ms = "Device.ManagementServer."
        return self.values[ms + "Username"], self.values[ms + "Password"]


class GatewayCase(TestCase):
    """A gateway enrolling with the bootstrap credential, with presets; ``auth`` adds
    settings to its ``[auth]``."""

    redis_server: Any
    auth: dict[str, Any] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        import redis

        self.logged: list[str] = []
        observer = lambda event: self.logged.append(repr(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.dir = tempfile.mkdtemp(prefix="cwmpgw-prov-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        self.service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            auth={
                "unknown_devices": "enroll",
                "bootstrap_username": BOOTSTRAP_USER,
                "bootstrap_password": BOOTSTRAP_PASSWORD,
                **self.auth,
            },
            connreq={"stun": True, "stun_interface": "127.0.0.1", "stun_port": 0},
            # Zero-touch provisioning as shipped, plus presets.
            provision={
                "credentials": True,
                "periodic_inform": True,
                "values": [
                    {"name": "Time.NTPServer1", "value": "pool.ntp.org"},
                    {
                        "name": "Device.ManagementServer.CWMPRetryMinimumWaitInterval",
                        "value": 10,
                        "type": "xsd:unsignedInt",
                    },
                ],
            },
        )
        self.url = acs_url(self.service)
        self.cafile = cafile(self.dir)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)

    def session(
        self,
        user: str,
        password: str,
        cpe: ApplyingCpe | None = None,
        event: str = "1 BOOT",
        serial: str = "22275K2000315",
    ) -> Any:
        return deferToThread(
            cpe_client.run_session,
            self.url,
            user,
            password,
            cafile=self.cafile,
            answer=cpe,
            event=event,
            serial=serial,
        )

    def events(self, type_: str) -> list[dict[str, Any]]:
        out = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in out if e["type"] == type_]

    def assertNowhere(self, *secrets: str) -> None:
        """No secret in any log event, event, task or other Redis value of this run."""
        dump = "\n".join(self.logged) + json.dumps(self.redis.xrange(self.prefix + "events"))
        for key in self.redis.scan_iter(self.prefix + "*"):
            kind = self.redis.type(key)
            if kind == "hash":
                dump += json.dumps(self.redis.hgetall(key))
            elif kind == "string":
                dump += self.redis.get(key) or ""
        for secret in secrets:
            self.assertNotIn(secret, dump)


@pytest.mark.usefixtures("redis_for_class")
class ProvisioningTests(GatewayCase):
    async def test_enrolment_ends_with_unique_credentials_in_use(self) -> None:
        cpe = ApplyingCpe()
        exchanges = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, cpe, "0 BOOTSTRAP")
        self.assertEqual(exchanges[-1].status, 204)
        # Credentials, STUN credentials (on their own: see below), then the presets: its
        # Inform does not say whether it has PeriodicInformTime, so it is asked once.
        self.assertEqual(cpe.methods, ENROLMENT)
        username, password = cpe.credential()
        self.assertEqual(username, DEVICE_ID)
        self.assertGreaterEqual(len(password), 32)  # 24 random bytes, base64url
        ms = "Device.ManagementServer."
        cr_user, cr_password = (
            cpe.values[ms + "ConnectionRequestUsername"],
            cpe.values[ms + "ConnectionRequestPassword"],
        )
        stun_user, stun_password = cpe.values[ms + "STUNUsername"], cpe.values[ms + "STUNPassword"]
        self.assertEqual(stun_user, DEVICE_ID)
        self.assertGreaterEqual(len(stun_password), 32)
        self.assertNotIn(stun_password, (password, cr_password))
        self.assertEqual(cpe.values[ms + "PeriodicInformEnable"], "true")
        self.assertIn(ms + "PeriodicInformTime", cpe.values)
        self.assertEqual(cpe.values["Device.Time.NTPServer1"], "pool.ntp.org")
        self.assertEqual(cpe.values[ms + "CWMPRetryMinimumWaitInterval"], "10")
        # The gateway can now answer connection requests with what it set, and verify
        # the CPE's STUN bindings with it.
        cr = await self.service.connreq_credentials.get(DEVICE_ID)
        self.assertEqual((cr.username, cr.password), (cr_user, cr_password))
        stun_passwords = await self.service.connreq_credentials.stun_passwords(DEVICE_ID)
        self.assertEqual(stun_passwords, (stun_password,))
        await self.assert_binding(stun_password.encode())

        again = await self.session(username, password, ApplyingCpe())
        self.assertEqual([e.status for e in again], [200, 204])  # nothing more to set
        phases = [e["data"]["phase"] for e in self.events("credentials.changed")]
        self.assertEqual(phases, ["sent", "confirmed", "active"])
        # The bootstrap credential no longer speaks for this device.
        refused = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD)
        self.assertEqual(refused[0].status, 403)
        self.assertNowhere(password, cr_password, stun_password, BOOTSTRAP_PASSWORD)

    async def assert_binding(self, key: bytes) -> None:
        """A binding signed with ``key`` reaches the gateway's STUN server and is recorded;
        the same one unsigned is not."""
        from cwmpgw.connreq import stun

        answers: list[stun.StunMessage] = []
        client = DatagramProtocol()
        client.datagramReceived = lambda data, addr: answers.append(stun.parse(data))  # type: ignore[method-assign]
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        to = ("127.0.0.1", self.service.stun_port.getHost().port)
        binding = self.prefix + "stun:" + DEVICE_ID
        for integrity_key, expected in ((None, stun.CLASS_ERROR), (key, stun.CLASS_SUCCESS)):
            request = stun.StunMessage(
                stun.BINDING,
                stun.CLASS_REQUEST,
                b"\x00" + os.urandom(15),  # classic RFC 3489, as Annex G CPEs speak it
                (
                    (stun.CONNECTION_REQUEST_BINDING, stun.CONNECTION_REQUEST_BINDING_VALUE),
                    (stun.USERNAME, stun.encode_username(DEVICE_ID)),
                ),
                False,
            )
            answers.clear()
            port.write(stun.build(request, integrity_key=integrity_key), to)
            for _ in range(100):
                if answers and (expected == stun.CLASS_ERROR or self.redis.exists(binding)):
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.assertEqual([a.cls for a in answers], [expected])
            self.assertEqual(bool(self.redis.exists(binding)), expected == stun.CLASS_SUCCESS)

    async def test_cpe_without_stun_keeps_its_new_credentials(self) -> None:
        """The STUN parameters go in a SetParameterValues of their own: a data model
        without them refuses that one only, and nothing else is lost."""
        cpe = ApplyingCpe(stun=False)
        exchanges = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, cpe, "0 BOOTSTRAP")
        self.assertEqual(exchanges[-1].status, 204)
        self.assertEqual(cpe.methods, ENROLMENT)
        self.assertNotIn("Device.ManagementServer.STUNPassword", cpe.values)
        self.assertEqual(await self.service.connreq_credentials.stun_passwords(DEVICE_ID), ())
        cr = await self.service.connreq_credentials.get(DEVICE_ID)
        self.assertEqual(
            cr.password, cpe.values["Device.ManagementServer.ConnectionRequestPassword"]
        )
        self.assertIn("Device.ManagementServer.PeriodicInformTime", cpe.values)
        done = await self.session(*cpe.credential(), ApplyingCpe(stun=False))
        self.assertEqual([e.status for e in done], [200, 204])  # not asked again every session
        phases = [e["data"]["phase"] for e in self.events("credentials.changed")]
        self.assertEqual(phases, ["sent", "confirmed", "active"])

    async def test_cpe_without_periodic_inform_time_gets_its_interval(self) -> None:
        """The default presets include PeriodicInformTime, which many CPEs lack: in one
        atomic SetParameterValues it would make the CPE refuse the interval too."""
        cpe = ApplyingCpe(lacks=(MS + "PeriodicInformTime",))
        exchanges = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, cpe, "0 BOOTSTRAP")
        self.assertEqual(exchanges[-1].status, 204)
        self.assertEqual(cpe.methods, ENROLMENT)  # asked what ManagementServer has, once
        self.assertFalse([names for names in cpe.sets if MS + "PeriodicInformTime" in names])
        self.assertEqual(cpe.values[MS + "PeriodicInformEnable"], "true")
        self.assertEqual(cpe.values[MS + "PeriodicInformInterval"], "86400")
        self.assertEqual(cpe.values["Device.Time.NTPServer1"], "pool.ntp.org")
        self.assertEqual(cpe.values[MS + "CWMPRetryMinimumWaitInterval"], "10")
        self.assertEqual(self.events("presets.failed") + self.events("presets.partial"), [])
        # The answer is remembered: presets again (a factory reset) ask nothing.
        again = ApplyingCpe(lacks=(MS + "PeriodicInformTime",))
        await self.session(*cpe.credential(), again, "0 BOOTSTRAP")
        self.assertEqual(again.methods, [SPV])
        self.assertNotIn(MS + "PeriodicInformTime", again.sets[0])
        self.assertIn(MS + "PeriodicInformInterval", again.values)

    async def test_a_refused_preset_is_dropped_and_the_rest_applied(self) -> None:
        """9003 with a 9005 for one value: the set is sent again without it, the rest is
        applied, presets.partial says what was dropped, and it is never sent again."""
        cpe = ApplyingCpe(lacks=("Device.Time.NTPServer1",))
        exchanges = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, cpe, "0 BOOTSTRAP")
        self.assertEqual(exchanges[-1].status, 204)
        self.assertEqual(cpe.methods, [*ENROLMENT, SPV])
        self.assertIn("Device.Time.NTPServer1", cpe.sets[2])
        self.assertNotIn("Device.Time.NTPServer1", cpe.sets[3])
        self.assertEqual(cpe.values[MS + "PeriodicInformInterval"], "86400")
        self.assertIn(MS + "PeriodicInformTime", cpe.values)
        self.assertEqual(cpe.values[MS + "CWMPRetryMinimumWaitInterval"], "10")
        (partial,) = self.events("presets.partial")
        self.assertEqual(partial["device"]["id"], DEVICE_ID)
        self.assertEqual(
            partial["data"]["dropped"],
            [{"name": "Device.Time.NTPServer1", "code": 9005, "string": "Invalid parameter name"}],
        )
        self.assertEqual(partial["data"]["remembered"], ["Device.Time.NTPServer1"])
        self.assertEqual(sorted(partial["data"]["applied"]), sorted(cpe.sets[3]))
        (line,) = [e for e in self.logged if "took its presets without" in e]
        self.assertIn(DEVICE_ID, line)
        self.assertIn("Device.Time.NTPServer1", line)
        # Remembered for this device: the next presets leave it out from the start.
        again = ApplyingCpe(lacks=("Device.Time.NTPServer1",))
        await self.session(*cpe.credential(), again, "0 BOOTSTRAP")
        self.assertEqual(again.methods, [SPV])
        self.assertNotIn("Device.Time.NTPServer1", again.sets[0])
        self.assertEqual(len(self.events("presets.partial")), 1)

    async def test_a_cpe_that_drops_the_session_is_logged_and_not_asked_every_session(
        self,
    ) -> None:
        """Some CPEs drop the session instead of answering with a fault: the gateway
        says so, with the device id, and stops sending what they cannot take in every
        session (one retry at once, then an hour, doubling)."""
        from cwmpgw.cwmp.session import Outcome

        first = ApplyingCpe(drop_on=MS + "PeriodicInformInterval")
        second = ApplyingCpe(drop_on=MS + "PeriodicInformInterval")
        for cpe in (first, second):
            credential = first.credential() if cpe is second else BOOTSTRAP_CREDENTIAL
            with self.assertRaises(ConnectionAbortedError):
                await self.session(*credential, cpe, "0 BOOTSTRAP")
            self.service.engine.registry.end_all(Outcome.TIMEOUT)
            await self.service.engine.flush()
        self.assertEqual(second.methods, [SPV])  # the presets only: credentials are done
        lines = [e for e in self.logged if "without answering" in e]
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertIn(DEVICE_ID, line)
            self.assertIn("SetParameterValues", line)
        failed = [e["data"] for e in self.events("presets.failed")]
        self.assertEqual(
            [(f["reason"], f["unanswered"]) for f in failed], [("unanswered", 1), ("unanswered", 2)]
        )
        # The third session is left alone: nothing is sent, the session ends cleanly.
        third = ApplyingCpe(drop_on=MS + "PeriodicInformInterval")
        done = await self.session(*first.credential(), third, "0 BOOTSTRAP")
        self.assertEqual([e.status for e in done], [200, 204])
        self.assertEqual(third.methods, [])

    async def test_refused_switch_leaves_the_device_working(self) -> None:
        cpe = ApplyingCpe(fault=9008)
        exchanges = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, cpe, "0 BOOTSTRAP")
        self.assertEqual(exchanges[-1].status, 204)
        self.assertEqual(self.events("credentials.changed")[-1]["data"]["phase"], "failed")
        self.assertEqual(self.redis.hlen(self.prefix + "cred-pending-by-device"), 0)
        # The old (bootstrap) credential still works, and the gateway tries again.
        retry = ApplyingCpe()
        again = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, retry)
        self.assertEqual(again[-1].status, 204)
        self.assertTrue(retry.values)
        done = await self.session(*retry.credential())
        self.assertEqual([e.status for e in done], [200, 204])

    async def test_session_lost_mid_switch_loses_nothing(self) -> None:
        with self.assertRaises(ConnectionAbortedError):
            await self.session(
                BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, ApplyingCpe(drop=True), "0 BOOTSTRAP"
            )
        self.service.engine.registry.end_all(
            __import__("cwmpgw.cwmp.session", fromlist=["Outcome"]).Outcome.TIMEOUT
        )
        cpe = ApplyingCpe()
        again = await self.session(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, cpe)
        self.assertEqual(again[-1].status, 204)
        self.assertEqual([e.status for e in await self.session(*cpe.credential())], [200, 204])

    async def test_rotation_on_demand(self) -> None:
        await import_into(
            self,
            f"device_id,username,password\n{DEVICE_ID},{DEVICE_ID},first-password-123\n",
            self.dir,
            self.redis_server.url,
            self.prefix,
        )
        plain = await self.session(DEVICE_ID, "first-password-123", ApplyingCpe())
        self.assertEqual([e.status for e in plain], [200, 204])  # nothing to set
        rotate = await deferToThread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "cwmpgw.credentials",
                "--redis",
                self.redis_server.url,
                "--prefix",
                self.prefix,
                "rotate",
                DEVICE_ID,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(rotate.returncode, 0, rotate.stderr)
        cpe = ApplyingCpe()
        await self.session(DEVICE_ID, "first-password-123", cpe)
        username, password = cpe.credential()
        self.assertEqual(username, DEVICE_ID)
        # A rotation gives new STUN credentials too.
        stun_password = cpe.values["Device.ManagementServer.STUNPassword"]
        self.assertEqual(
            await self.service.connreq_credentials.stun_passwords(DEVICE_ID), (stun_password,)
        )
        # Until the CPE uses the new password, the old one still works...
        self.assertEqual((await self.session(DEVICE_ID, "first-password-123"))[-1].status, 204)
        # ...then the new one replaces it.
        self.assertEqual([e.status for e in await self.session(username, password)], [200, 204])
        self.assertEqual((await self.session(DEVICE_ID, "first-password-123"))[0].status, 401)
        self.assertNowhere(password, stun_password)


@pytest.mark.usefixtures("redis_for_class")
class StuckBootstrapTests(GatewayCase):
    """A CPE that confirms its new credentials but keeps the bootstrap one (firmware that
    computes its Authorization once): reported once, after auth.bootstrap_stuck_after."""

    auth = {"bootstrap_stuck_after": 3}

    async def test_reported_once_after_n_sessions(self) -> None:
        cpe = ApplyingCpe()
        await self.session(*BOOTSTRAP_CREDENTIAL, cpe, "0 BOOTSTRAP")
        confirmed = self.events("credentials.changed")[-1]
        self.assertEqual(confirmed["data"]["phase"], "confirmed")
        for _ in range(2):
            self.assertEqual(
                [e.status for e in await self.session(*BOOTSTRAP_CREDENTIAL)], [200, 204]
            )
        self.assertEqual(self.events("credentials.stuck"), [])
        for _ in range(2):  # the third reaches the threshold; the fourth says nothing new
            self.assertEqual(
                [e.status for e in await self.session(*BOOTSTRAP_CREDENTIAL)], [200, 204]
            )
        (stuck,) = self.events("credentials.stuck")
        self.assertEqual(stuck["device"]["id"], DEVICE_ID)
        data = stuck["data"]
        self.assertEqual((data["sessions"], data["username"]), (3, BOOTSTRAP_USER))
        self.assertEqual((data["policy"], data["refused_from"]), ("accept", None))
        self.assertLessEqual(data["since"], stuck["ts"])
        self.assertGreaterEqual(data["since"], confirmed["ts"][:19])
        (line,) = [e for e in self.logged if "still authenticates with the bootstrap" in e]
        self.assertIn(DEVICE_ID, line)
        metrics = self.service.metrics.render().decode()
        self.assertIn("cwmpgw_credentials_stuck_total 1.0", metrics)
        self.assertIn("cwmpgw_bootstrap_refused_total 0.0", metrics)
        # Once it uses its own credential, the bootstrap one is done with, as before.
        self.assertEqual([e.status for e in await self.session(*cpe.credential())], [200, 204])
        self.assertEqual((await self.session(*BOOTSTRAP_CREDENTIAL))[0].status, 403)
        self.assertEqual(len(self.events("credentials.stuck")), 1)
        self.assertFalse(self.redis.exists(self.prefix + "bootstrap-use:" + DEVICE_ID))


@pytest.mark.usefixtures("redis_for_class")
class RefusedBootstrapTests(GatewayCase):
    """auth.bootstrap_after_confirm = "refuse": past the grace period (0 here) the
    bootstrap credential no longer speaks for a device that confirmed its own."""

    auth = {"bootstrap_after_confirm": "refuse", "bootstrap_grace": 0, "bootstrap_stuck_after": 1}

    async def test_refused_for_that_device_only(self) -> None:
        cpe = ApplyingCpe()
        await self.session(*BOOTSTRAP_CREDENTIAL, cpe, "0 BOOTSTRAP")
        refused = await self.session(*BOOTSTRAP_CREDENTIAL)
        self.assertEqual([e.status for e in refused], [401])
        self.assertEqual(refused[0].headers.get("connection"), "close")
        self.assertTrue(refused[0].challenges)  # asked again: it may re-read its credential
        (stuck,) = self.events("credentials.stuck")
        self.assertEqual(stuck["data"]["policy"], "refuse")
        self.assertEqual(stuck["data"]["refused_from"], stuck["data"]["since"])  # grace 0
        (failed,) = self.events("auth.failed")
        self.assertEqual(failed["device"]["id"], DEVICE_ID)
        self.assertIn("bootstrap credential refused", failed["data"]["reason"])
        # Not a guess: nothing counted towards the brute-force blocks.
        self.assertEqual(list(self.redis.scan_iter(self.prefix + "authfail:*")), [])
        self.assertIn("cwmpgw_bootstrap_refused_total 1.0", self.service.metrics.render().decode())
        # Another device that never had a credential of its own still enrols with it.
        other = ApplyingCpe()
        enrolled = await self.session(*BOOTSTRAP_CREDENTIAL, other, "0 BOOTSTRAP", "OTHER00042")
        self.assertEqual([enrolled[0].status, enrolled[-1].status], [200, 204])
        self.assertEqual(other.credential()[0], "9CA2F4-EC220_G5_V3-OTHER00042")
        # Deleting the device (say, before a factory reset) lets it enrol afresh.
        self.assertTrue(await self.service.directory.delete_device(DEVICE_ID))
        again = ApplyingCpe()
        enrolled = await self.session(*BOOTSTRAP_CREDENTIAL, again, "0 BOOTSTRAP")
        self.assertEqual([enrolled[0].status, enrolled[-1].status], [200, 204])
        # And the device gets in with the credential it was given.
        self.assertEqual([e.status for e in await self.session(*again.credential())], [200, 204])
