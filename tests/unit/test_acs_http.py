"""The ACS endpoint end to end in memory: HTTP, authentication, sessions, store and events."""

from __future__ import annotations

import base64
import json

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp.messages import DeviceId
from tests.support import cpe_envelopes as cpe
from tests.support import digest_client
from tests.support.memhttp import (
    DEVICE_ID,
    PASSWORD,
    USER,
    Connection,
    MemoryAcs,
    OneRequest,
    Response,
    digest_post,
)
from tests.support.schema import assert_valid

OTHER = DeviceId("Acme", "00259E", "EG8145V5", "48575443A94196A5")
OTHER_ID = "00259E-EG8145V5-48575443A94196A5"


class Base(SynchronousTestCase):
    acs_options: dict[str, object] = {}

    def setUp(self) -> None:
        self.acs = MemoryAcs(**self.acs_options)  # type: ignore[arg-type]
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)

    def open_session(
        self, conn: Connection | None = None, **inform_kw: object
    ) -> tuple[Connection, Response]:
        conn = conn or self.acs.connect()
        response = digest_post(conn, cpe.inform(**inform_kw), USER, PASSWORD)  # type: ignore[arg-type]
        self.assertEqual(response.status, 200, response.body)
        return conn, response

    def types(self) -> list[str]:
        return [e.type for e in self.acs.bus.events]

    def assertNoSecretInEvents(self, *secrets: str) -> None:
        dump = json.dumps([e.to_dict() for e in self.acs.bus.events])
        for secret in secrets:
            self.assertNotIn(secret, dump)


class DigestSessionTests(Base):
    def test_full_session_md5(self) -> None:
        conn = self.acs.connect()
        first = conn.post(cpe.inform())
        self.assertEqual(first.status, 401)
        challenges = first.headers["www-authenticate"]
        self.assertEqual(
            [digest_client.parse_challenge(c)["algorithm"] for c in challenges], ["MD5", "SHA-256"]
        )
        self.assertEqual(self.acs.bus.events, [])  # a plain challenge is not a failure
        auth = digest_client.authorization(digest_client.pick(challenges, "MD5"), USER, PASSWORD)
        response = conn.post(cpe.inform(request_id="42"), {"Authorization": auth})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-type"), 'text/xml; charset="utf-8"')
        assert_valid(response.body)
        self.assertIn(b"InformResponse", response.body)
        self.assertIn(b">42<", response.body)
        self.assertIn("cwmpgw_session=", response.header("set-cookie") or "")
        done = conn.post(b"")
        self.assertEqual(done.status, 204)
        self.assertEqual(done.body, b"")
        self.assertIsNone(done.header("content-type"))
        self.assertEqual(self.types(), ["device.registered", "inform", "session.closed"])
        closed = self.acs.bus.events[-1]
        self.assertEqual(closed.data["outcome"], "completed")
        self.assertEqual(closed.data["rpc_count"], 1)
        self.assertEqual(closed.device["id"] if closed.device else None, DEVICE_ID)
        self.assertEqual(len(self.acs.engine.registry), 0)
        self.assertNoSecretInEvents(PASSWORD)

    def test_sha256(self) -> None:
        conn = self.acs.connect()
        response = digest_post(conn, cpe.inform(), USER, PASSWORD, algorithm="SHA-256")
        self.assertEqual(response.status, 200)

    def test_device_record_and_inform_event(self) -> None:
        self.open_session(events=(("0 BOOTSTRAP", ""), ("1 BOOT", "")), session_timeout=60)
        device = self.successResultOf(self.acs.devices.get_device(DEVICE_ID))
        assert device is not None
        self.assertEqual(device["oui"], "9CA2F4")
        self.assertEqual(device["serial_number"], "22275K2000315")
        self.assertEqual(device["last_source"], "192.0.2.10")
        self.assertEqual(device["cwmp_version"], "1.3")
        self.assertEqual(device["connection_request_url"], cpe.DEFAULT_PARAMETERS[-1][1])
        self.assertEqual(
            device["last_events"],
            [{"code": "0 BOOTSTRAP", "command_key": ""}, {"code": "1 BOOT", "command_key": ""}],
        )
        self.assertIn("Device.DeviceInfo.SoftwareVersion", device["parameters"])
        registered, inform = self.acs.bus.events
        self.assertEqual(registered.data["first_contact"], True)
        self.assertEqual(registered.data["bootstrap"], True)
        self.assertEqual([e["code"] for e in inform.data["events"]], ["0 BOOTSTRAP", "1 BOOT"])
        self.assertEqual(inform.node, "test-node")
        envelope = inform.to_dict()
        self.assertEqual(sorted(envelope), ["data", "device", "id", "node", "ts", "type", "v"])
        self.assertEqual(envelope["v"], 1)

    def test_known_device_is_not_registered_again(self) -> None:
        conn, _ = self.open_session()
        conn.post(b"")
        self.open_session()
        self.assertEqual(self.types().count("device.registered"), 1)
        self.assertEqual(self.types().count("inform"), 2)

    def test_reconnect_after_401_succeeds(self) -> None:
        first = self.acs.connect().post(cpe.inform())
        challenge = digest_client.pick(first.headers["www-authenticate"])
        second = self.acs.connect()  # the CPE closed the connection after the challenge
        response = second.post(
            cpe.inform(), {"Authorization": digest_client.authorization(challenge, USER, PASSWORD)}
        )
        self.assertEqual(response.status, 200)

    def test_replayed_authorization_refused(self) -> None:
        conn = self.acs.connect()
        challenge = digest_client.pick(conn.post(cpe.inform()).headers["www-authenticate"])
        auth = digest_client.authorization(challenge, USER, PASSWORD)
        self.assertEqual(conn.post(cpe.inform(), {"Authorization": auth}).status, 200)
        replay = self.acs.connect(peer="198.51.100.9").post(cpe.inform(), {"Authorization": auth})
        # Refused; the response was right, so the answer is a fresh nonce (stale=true)
        # and nothing is counted: the replayer learns nothing it did not know.
        self.assertEqual(replay.status, 401)
        self.assertTrue(all(v.endswith("stale=true") for v in replay.headers["www-authenticate"]))
        self.assertNotIn("auth.failed", self.types())
        self.assertEqual(self.types().count("inform"), 1)

    def test_version_negotiation(self) -> None:
        _, response = self.open_session(supported_versions="1.0,1.1,1.2,1.3,1.4")
        self.assertIn(b"UseCWMPVersion", response.body)
        self.assertIn(b">1.4<", response.body)
        assert_valid(response.body)


class AuthFailureTests(Base):
    def test_wrong_password(self) -> None:
        conn = self.acs.connect()
        response = digest_post(conn, cpe.inform(), USER, "wrong-password")
        self.assertEqual(response.status, 401)
        self.assertTrue(response.headers["www-authenticate"])
        self.assertEqual(self.types(), ["auth.failed"])
        event = self.acs.bus.events[0]
        self.assertEqual(event.data["source"], "192.0.2.10")
        self.assertEqual(event.data["username"], USER)
        self.assertEqual(event.device["id"] if event.device else None, DEVICE_ID)
        self.assertNoSecretInEvents("wrong-password", PASSWORD)
        self.assertEqual(self.acs.devices.devices, {})
        # The second failure on the connection also closes it.
        again = digest_post(conn, cpe.inform(), USER, "wrong-again", nc=2)
        self.assertEqual(again.status, 401)
        self.assertEqual(again.header("connection"), "close")

    def test_unknown_user_with_reject_policy(self) -> None:
        response = digest_post(self.acs.connect(), cpe.inform(device=OTHER), OTHER_ID, "whatever")
        self.assertEqual(response.status, 401)
        self.assertEqual(self.acs.bus.events[0].data["reason"], "unknown username")
        self.assertEqual(
            self.acs.bus.events[0].device["id"] if self.acs.bus.events[0].device else None, OTHER_ID
        )

    def test_identity_must_match_inform_device(self) -> None:
        response = digest_post(self.acs.connect(), cpe.inform(device=OTHER), USER, PASSWORD)
        self.assertEqual(response.status, 403)
        self.assertEqual(self.types(), ["auth.failed"])
        self.assertEqual(
            self.acs.bus.events[0].data["reason"], "credentials belong to another device"
        )
        self.assertEqual(self.acs.devices.devices, {})
        self.assertEqual(len(self.acs.engine.registry), 0)

    def test_scheme_not_offered_gets_the_challenge(self) -> None:
        # TR-069 §3.4.4: over TLS a CPE SHOULD send Basic pre-emptively. Basic is not
        # offered here, so its answer is the Digest challenge, and it is no failure.
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        for header in (basic, "Bearer abc", "Negotiate"):
            conn = self.acs.connect(secure=True)
            response = conn.post(cpe.inform(), {"Authorization": header})
            self.assertEqual(response.status, 401)
            challenges = response.headers["www-authenticate"]
            self.assertTrue(challenges and all(v.startswith("Digest ") for v in challenges))
            self.assertFalse(any("stale" in v for v in challenges))
            self.assertFalse(conn.closing)
            answer = digest_client.authorization(digest_client.pick(challenges), USER, PASSWORD)
            self.assertEqual(conn.post(cpe.inform(), {"Authorization": answer}).status, 200)
        self.assertNotIn("auth.failed", self.types())
        self.assertEqual(self.types().count("inform"), 3)


class BasicTests(Base):
    acs_options = {"schemes": ("digest", "basic")}

    def basic(self, password: str = PASSWORD) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()
        }

    def test_preemptive_basic_over_tls(self) -> None:
        response = self.acs.connect(secure=True).post(cpe.inform(), self.basic())
        self.assertEqual(response.status, 200)

    def test_basic_offered_only_over_tls(self) -> None:
        plain = self.acs.connect().post(cpe.inform())
        self.assertFalse(any(c.startswith("Basic") for c in plain.headers["www-authenticate"]))
        tls = self.acs.connect(secure=True).post(cpe.inform())
        self.assertTrue(any(c.startswith("Basic") for c in tls.headers["www-authenticate"]))

    def test_basic_refused_over_plain_http(self) -> None:
        response = self.acs.connect().post(cpe.inform(), self.basic())
        # Not accepted, not counted: the answer is the challenge of what is offered here.
        self.assertEqual(response.status, 401)
        challenges = response.headers["www-authenticate"]
        self.assertTrue(challenges and all(v.startswith("Digest ") for v in challenges))
        self.assertEqual(self.acs.bus.events, [])
        self.assertEqual(self.acs.devices.devices, {})

    def test_basic_wrong_password(self) -> None:
        response = self.acs.connect(secure=True).post(cpe.inform(), self.basic("nope"))
        self.assertEqual(response.status, 401)
        self.assertEqual(self.types(), ["auth.failed"])  # Basic is offered: a guess counts
        self.assertNoSecretInEvents("nope", PASSWORD)


class BasicWithoutTlsTests(Base):
    acs_options = {"schemes": ("basic",), "basic_without_tls": True}

    def test_operator_may_allow_basic_on_plain_http(self) -> None:
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.assertEqual(
            self.acs.connect().post(cpe.inform(), {"Authorization": basic}).status, 200
        )


class EnrollTests(Base):
    acs_options = {"enroll": True}

    def test_unknown_device_enrolls_with_bootstrap_credential(self) -> None:
        response = digest_post(
            self.acs.connect(),
            cpe.inform(device=OTHER, events=(("0 BOOTSTRAP", ""),)),
            "bootstrap",
            "bootstrap-secret",
        )
        self.assertEqual(response.status, 200)
        registered = self.acs.bus.events[0]
        self.assertEqual(registered.type, "device.registered")
        self.assertEqual(registered.data["username"], "bootstrap")
        self.assertNoSecretInEvents("bootstrap-secret")

    def test_bootstrap_credential_refused_for_device_with_own_credential(self) -> None:
        response = digest_post(self.acs.connect(), cpe.inform(), "bootstrap", "bootstrap-secret")
        self.assertEqual(response.status, 403)
        self.assertEqual(self.types(), ["auth.failed"])

    def test_wrong_bootstrap_password(self) -> None:
        response = digest_post(self.acs.connect(), cpe.inform(device=OTHER), "bootstrap", "guess")
        self.assertEqual(response.status, 401)


class SessionTrackingTests(Base):
    def test_session_continues_on_new_connection_with_cookie_after_reauth(self) -> None:
        conn, _ = self.open_session()
        other = self.acs.connect()
        other.cookie = conn.cookie
        first = other.post(b"")
        self.assertEqual(first.status, 401)  # a new connection authenticates again
        challenge = digest_client.pick(first.headers["www-authenticate"])
        done = other.post(
            b"", {"Authorization": digest_client.authorization(challenge, USER, PASSWORD)}
        )
        self.assertEqual(done.status, 204)
        self.assertEqual(self.acs.bus.events[-1].data["outcome"], "completed")

    def test_stolen_cookie_with_other_device_credentials_refused(self) -> None:
        self.acs.add_device(OTHER_ID, OTHER_ID, "other-pass")
        conn, _ = self.open_session()
        thief = self.acs.connect(peer="198.51.100.66")
        thief.cookie = conn.cookie
        challenge = digest_client.pick(thief.post(b"").headers["www-authenticate"])
        response = thief.post(
            b"", {"Authorization": digest_client.authorization(challenge, OTHER_ID, "other-pass")}
        )
        self.assertEqual(response.status, 403)
        self.assertEqual(len(self.acs.engine.registry), 1)  # the victim's session is intact
        self.assertEqual(conn.post(b"").status, 204)

    def test_cookieless_cpe_followed_by_connection(self) -> None:
        conn, _ = self.open_session()
        conn.cookie = None
        self.assertEqual(conn.post(b"").status, 204)

    def test_idle_timeout_on_injected_clock(self) -> None:
        conn, _ = self.open_session()
        self.acs.clock.advance(29)
        self.assertEqual(len(self.acs.engine.registry), 1)
        self.acs.clock.advance(2)
        self.assertEqual(len(self.acs.engine.registry), 0)
        self.assertEqual(self.acs.bus.events[-1].data["outcome"], "timeout")
        conn.protocol.connectionLost(None)  # type: ignore[arg-type]
        late = self.acs.connect()
        late.cookie = conn.cookie
        self.assertEqual(late.post(b"").status, 400)

    def test_each_post_restarts_the_idle_timer(self) -> None:
        conn, _ = self.open_session()
        self.acs.clock.advance(20)
        conn.post(cpe.get_rpc_methods())
        self.acs.clock.advance(20)
        self.assertEqual(len(self.acs.engine.registry), 1)

    def test_cwmp_session_timeout_honoured(self) -> None:
        self.open_session(session_timeout=60)
        self.acs.clock.advance(45)
        self.assertEqual(len(self.acs.engine.registry), 1)
        self.acs.clock.advance(16)
        self.assertEqual(len(self.acs.engine.registry), 0)

    def test_new_inform_supersedes_old_session(self) -> None:
        self.open_session()
        self.open_session()
        closed = [e for e in self.acs.bus.events if e.type == "session.closed"]
        self.assertEqual([e.data["outcome"] for e in closed], ["superseded"])
        self.assertEqual(len(self.acs.engine.registry), 1)

    def test_keep_alive(self) -> None:
        conn, response = self.open_session()
        self.assertNotEqual(response.header("connection"), "close")
        self.assertFalse(conn.transport.disconnecting)


class TransferTests(Base):
    def test_transfer_complete_recorded_once(self) -> None:
        conn, _ = self.open_session(events=(("7 TRANSFER COMPLETE", ""), ("M Download", "fw-42")))
        ack = conn.post(cpe.transfer_complete(request_id="tc1", command_key="fw-42"))
        self.assertEqual(ack.status, 200)
        assert_valid(ack.body)
        self.assertEqual(conn.post(b"").status, 204)
        # The CPE missed the acknowledgement and sends it again in its next session.
        conn2, _ = self.open_session(events=(("7 TRANSFER COMPLETE", ""), ("M Download", "fw-42")))
        self.assertEqual(
            conn2.post(cpe.transfer_complete(request_id="tc2", command_key="fw-42")).status, 200
        )
        transfers = [e for e in self.acs.bus.events if e.type == "transfer.complete"]
        self.assertEqual(len(transfers), 1)
        self.assertEqual(transfers[0].data["command_key"], "fw-42")
        self.assertEqual(transfers[0].data["success"], True)
        self.assertEqual(len(self.acs.devices.transfers), 1)

    def test_autonomous_transfer_complete(self) -> None:
        conn, _ = self.open_session()
        ack = conn.post(cpe.autonomous_transfer_complete(fault_code=9010, fault_string="failed"))
        self.assertIn(b"AutonomousTransferCompleteResponse", ack.body)
        (event,) = [e for e in self.acs.bus.events if e.type == "transfer.complete"]
        self.assertEqual(
            (event.data["autonomous"], event.data["success"], event.data["fault_code"]),
            (True, False, 9010),
        )

    def test_du_state_change_complete_recorded_once(self) -> None:
        events = (("11 DU STATE CHANGE COMPLETE", ""), ("M ChangeDUState", "du-7"))
        conn, _ = self.open_session(events=events)
        report = cpe.du_state_change_complete([{}, {"state": "Failed", "fault_code": 9018}])
        ack = conn.post(report)
        self.assertEqual(ack.status, 200)
        self.assertIn(b"<cwmp:DUStateChangeCompleteResponse", ack.body)
        assert_valid(ack.body)
        self.assertEqual(conn.post(b"").status, 204)
        # The acknowledgement was lost: the CPE reports it again in its next session.
        conn2, _ = self.open_session(events=events)
        self.assertEqual(conn2.post(report).status, 200)
        (event,) = [e for e in self.acs.bus.events if e.type == "du.complete"]
        self.assertEqual(
            (event.data["command_key"], event.data["autonomous"], event.data["success"]),
            ("du-7", False, False),
        )
        self.assertEqual(
            [(r["current_state"], r["fault_code"]) for r in event.data["results"]],
            [("Installed", 0), ("Failed", 9018)],
        )
        self.assertEqual(event.data["results"][0]["uuid"], "6f0c1f1a-0000-4000-8000-000000000000")

    def test_autonomous_du_state_change_complete(self) -> None:
        conn, _ = self.open_session()
        ack = conn.post(cpe.du_state_change_complete(autonomous=True))
        self.assertIn(b"<cwmp:AutonomousDUStateChangeCompleteResponse", ack.body)
        assert_valid(ack.body)
        (event,) = [e for e in self.acs.bus.events if e.type == "du.complete"]
        self.assertEqual((event.data["autonomous"], event.data["success"]), (True, True))
        self.assertEqual(event.data["results"][0]["operation_performed"], "Install")

    def test_store_failure_is_not_acknowledged(self) -> None:
        conn, _ = self.open_session()
        self.acs.devices.record_transfer = lambda *a: fail(ConnectionError("redis down"))  # type: ignore[method-assign]
        response = conn.post(cpe.transfer_complete())
        self.assertIn(b"<FaultCode>8005</FaultCode>", response.body)  # Retry request
        self.assertIn(b">1</cwmp:ID>", response.body)  # the request's own ID echoed
        assert_valid(response.body)
        self.assertNotIn(b"TransferCompleteResponse", response.body)
        self.flushLoggedErrors(ConnectionError)


class BadInputTests(Base):
    def assertPlain(self, response: Response, status: int) -> None:
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8")
        self.assertNotIn(b"Traceback", response.body)
        self.assertTrue(response.body.strip())

    def test_get_is_405(self) -> None:
        response = self.acs.connect().post(b"", method="GET")
        self.assertPlain(response, 405)
        self.assertEqual(response.header("allow"), "POST")

    def post_authenticated(self, body: bytes) -> Response:
        """What a CPE's request gets once it authenticates: only then is its body read."""
        return digest_post(self.acs.connect(), body, USER, PASSWORD)

    def test_malformed_xml(self) -> None:
        self.assertPlain(self.post_authenticated(b"<soap-env:Envelope"), 400)

    def test_dtd_refused(self) -> None:
        body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'
        self.assertPlain(self.post_authenticated(body), 400)

    def test_a_body_that_proves_nothing_is_not_read(self) -> None:
        # No credentials and no session: the answer is the challenge whatever the body
        # is, so it is not parsed (a wrong credential is read: it names a device).
        for body in (b"<soap-env:Envelope", b"\x00\xff" * 100, cpe.transfer_complete()):
            response = self.acs.connect().post(body)
            self.assertEqual(response.status, 401)
            self.assertTrue((response.header("www-authenticate") or "").startswith("Digest "))
        self.assertEqual(self.acs.bus.events, [])
        auth = 'Digest username="x", realm="cwmpgw", nonce="n", uri="/", response="0"'
        wrong = self.acs.connect().post(b"<soap-env:Envelope", {"Authorization": auth})
        self.assertPlain(wrong, 400)

    def test_unknown_namespace(self) -> None:
        body = cpe.inform().replace(b"urn:dslforum-org:cwmp-1-2", b"urn:example:cwmp-9-9")
        self.assertPlain(self.post_authenticated(body), 400)

    def test_body_over_limit(self) -> None:
        response = self.acs.connect().post(b"x" * (262_144 + 1))
        self.assertPlain(response, 413)

    def test_post_without_session(self) -> None:
        self.assertPlain(self.acs.connect().post(b""), 400)
        self.assertPlain(self.post_authenticated(cpe.transfer_complete()), 400)

    def test_invalid_inform_gets_fault_8003(self) -> None:
        body = cpe.inform().replace(b"<SerialNumber>22275K2000315</SerialNumber>", b"")
        response = self.post_authenticated(body)
        self.assertEqual(response.status, 200)
        assert_valid(response.body)
        self.assertIn(b"<FaultCode>8003</FaultCode>", response.body)

    def test_bad_input_mid_session_keeps_session_and_others(self) -> None:
        self.acs.add_device(OTHER_ID, OTHER_ID, "other-pass")
        conn, _ = self.open_session()
        other = self.acs.connect(peer="192.0.2.11")
        self.assertEqual(
            digest_post(other, cpe.inform(device=OTHER), OTHER_ID, "other-pass").status, 200
        )
        self.assertPlain(conn.post(b"<broken"), 400)
        self.assertEqual(conn.post(b"").status, 204)
        self.assertEqual(other.post(b"").status, 204)
        outcomes = [e.data["outcome"] for e in self.acs.bus.events if e.type == "session.closed"]
        self.assertEqual(outcomes, ["completed", "completed"])

    def test_out_of_order_response_closes_only_that_session(self) -> None:
        conn, _ = self.open_session()
        response = conn.post(cpe.rpc_response("GetParameterValues", "nope"))
        self.assertPlain(response, 400)
        self.assertEqual(self.acs.bus.events[-1].data["outcome"], "protocol_error")
        self.assertEqual(len(self.acs.engine.registry), 0)

    def test_store_failure_on_inform_is_503(self) -> None:
        self.acs.devices.record_inform = lambda r: fail(ConnectionError("redis down"))  # type: ignore[method-assign]
        conn = self.acs.connect()
        response = digest_post(conn, cpe.inform(), USER, PASSWORD)
        self.assertPlain(response, 503)
        self.assertEqual(response.header("retry-after"), "60")
        self.assertEqual(len(self.acs.engine.registry), 0)
        self.flushLoggedErrors(ConnectionError)


class DrainTests(Base):
    """SIGTERM's drain at the HTTP level: idle connections close at once, a session under
    way keeps its connection until the answer that ends it (Connection: close), and a
    new session is refused with 503 + Retry-After and close."""

    def setUp(self) -> None:
        self.source = OneRequest()
        self.acs_options = {"requests": self.source}
        super().setUp()

    def test_drain_closes_idle_connections_and_ends_sessions_with_close(self) -> None:
        idle = self.acs.connect(peer="192.0.2.77")
        conn, _ = self.open_session()
        self.acs.site.drain()
        self.assertTrue(idle.closing)  # no session, no request: closed now
        self.assertFalse(conn.closing)  # a session under way keeps its connection
        request = conn.post(b"")
        self.assertEqual(request.status, 200)
        self.assertIsNone(request.header("connection"))  # its envelopes keep it too
        done = conn.post(cpe.rpc_response("GetParameterValues", "acs-1"))
        self.assertEqual(done.status, 204)
        self.assertEqual(done.header("connection"), "close")  # the answer that ends it
        self.assertEqual(len(self.source.answers), 1)  # the CPE's answer was recorded
        late = self.acs.connect(peer="192.0.2.78").post(cpe.inform())  # before any challenge
        self.assertEqual((late.status, late.header("retry-after")), (503, "30"))
        self.assertEqual(late.header("connection"), "close")


class AcsTurnTests(Base):
    def setUp(self) -> None:
        self.source = OneRequest()
        self.acs_options = {"requests": self.source}
        super().setUp()

    def test_stopping_waits_for_the_source_to_record_the_end(self) -> None:
        recording: Deferred[None] = Deferred()
        self.source.session_ended = lambda session: recording  # type: ignore[method-assign]
        conn, _ = self.open_session()
        self.assertEqual(conn.post(b"").status, 200)  # a request is out, unanswered
        self.acs.engine.shutdown()
        flushed = self.acs.engine.flush()
        self.assertNoResult(flushed)  # e.g. the task going back to the queue, in Redis
        recording.callback(None)
        self.successResultOf(flushed)

    def test_request_sent_after_empty_post_then_204(self) -> None:
        conn, _ = self.open_session()
        request = conn.post(b"")
        self.assertEqual(request.status, 200)
        assert_valid(request.body)
        self.assertIn(b"GetParameterValues", request.body)
        done = conn.post(
            cpe.rpc_response(
                "GetParameterValues",
                "acs-1",
                parameters=[("Device.DeviceInfo.Foo", "1", "xsd:int")],
            )
        )
        self.assertEqual(done.status, 204)
        self.assertEqual(len(self.source.answers), 1)
        closed = self.acs.bus.events[-1]
        self.assertEqual((closed.data["acs_requests"], closed.data["rpc_count"]), (1, 2))
