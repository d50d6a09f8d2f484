"""Issue 13: what real firmware sends that locked devices out or left work hanging.

The CPE side is hand-written envelopes (tests/support/cpe_envelopes.py, with the raw bytes lxml
refuses to write put in afterwards), driven through the real Site, resource and engine in
memory (tests/support/memhttp.py).
"""

from __future__ import annotations

import base64

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.runner import TaskRunner
from tests.support import cpe_envelopes as cpe
from tests.support import digest_client
from tests.support.memhttp import Connection, MemoryAcs, digest_post
from tests.support.schema import assert_valid

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = DEVICE_ID, "s3cret-Pa55word"
SSID = "Device.WiFi.SSID.1.SSID"


def _request(body: bytes) -> tuple[str, str]:
    """(method, cwmp:ID) of an ACS request envelope."""
    root = etree.fromstring(body)
    ids = root.xpath("//*[local-name()='ID']")
    rpc = root.xpath("//*[local-name()='Body']/*")[0]
    return etree.QName(rpc).localname, ids[0].text


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.tasks = MemoryTaskService(events=self.acs.bus, clock=self.acs.clock)
        self.acs.engine._requests = TaskRunner(self.tasks, self.acs.devices)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.tasks.add_device(DEVICE_ID)

    def events(self, type_: str) -> list[dict[str, object]]:
        return [e.data | {"device": e.device} for e in self.acs.bus.events if e.type == type_]

    def session(self, inform: bytes | None = None) -> Connection:
        conn = self.acs.connect()
        response = digest_post(conn, inform or cpe.inform(), USER, PASSWORD)
        self.assertEqual(response.status, 200, response.body)
        assert_valid(response.body)
        return conn


class ControlCharacterTests(Base):
    """An SSID holding U+0002 made every Inform of the device 400 "malformed XML"; the CPE
    kept its events and sent the same Inform in every session, for ever."""

    def test_an_inform_with_a_control_character_is_answered_and_reported(self) -> None:
        parameters = (*cpe.DEFAULT_PARAMETERS, (SSID, "Home@CTRL@Net", "xsd:string"))
        inform = cpe.inform(events=(("1 BOOT", ""),), parameters=parameters)
        conn = self.session(inform.replace(b"@CTRL@", b"\x02"))
        self.assertEqual(conn.post(b"").status, 204)
        device = self.acs.devices.devices[DEVICE_ID]
        self.assertEqual(device["parameters"][SSID]["value"], "Home\ufffdNet")
        (stored,) = self.events("inform")
        self.assertEqual(stored["parameters"][SSID]["value"], "Home\ufffdNet")  # type: ignore[index]
        (repaired,) = self.events("envelope.repaired")
        self.assertEqual(repaired["device"]["id"], DEVICE_ID)  # type: ignore[index]
        self.assertEqual(repaired["method"], "Inform")
        self.assertEqual(repaired["session_id"], stored["session_id"])
        self.assertEqual(repaired["characters"], 1)
        self.assertEqual(
            repaired["parameters"],
            [{"name": SSID, "raw": base64.b64encode(b"Home\x02Net").decode()}],
        )
        self.assertEqual(repaired["parameters_omitted"], 0)
        # The session is an ordinary one, and so is the next Inform.
        self.assertEqual([e["outcome"] for e in self.events("session.closed")], ["completed"])
        self.session().post(b"")
        self.assertEqual(len(self.events("envelope.repaired")), 1)

    def test_a_character_reference_in_an_answer_to_a_task(self) -> None:
        conn = self.session()
        task = self.successResultOf(
            self.tasks.submit(DEVICE_ID, "GetParameterValues", {"parameter_names": [SSID]})
        )
        method, request_id = _request(conn.post(b"").body)
        self.assertEqual(method, "GetParameterValues")
        answer = cpe.rpc_response(
            "GetParameterValues", request_id, parameters=((SSID, "Guest@R@", "xsd:string"),)
        ).replace(b"@R@", b"&#1;&#x1f;")
        self.assertEqual(conn.post(answer).status, 204)
        done = self.successResultOf(self.tasks.get(task.id))
        assert done is not None
        self.assertEqual(done.status, "done")
        self.assertIn("Guest\ufffd\ufffd", repr(done.result))
        (repaired,) = self.events("envelope.repaired")
        self.assertEqual(repaired["method"], "GetParameterValuesResponse")
        self.assertEqual(repaired["characters"], 2)
        raw = base64.b64decode(repaired["parameters"][0]["raw"])  # type: ignore[index]
        self.assertEqual(raw, b"Guest&#1;&#x1f;")


class UnreadableAnswerTests(Base):
    """An answer the parser refuses used to leave its task ``running`` for the rest of the
    session (until the idle timeout), then queued to be sent again — to the same answer."""

    def start_task(self) -> tuple[Connection, str, str]:
        conn = self.session()
        task = self.successResultOf(
            self.tasks.submit(DEVICE_ID, "GetParameterValues", {"parameter_names": [SSID]})
        )
        method, request_id = _request(conn.post(b"").body)
        self.assertEqual(method, "GetParameterValues")
        return conn, task.id, request_id

    def test_the_task_fails_with_the_reason_and_the_session_ends(self) -> None:
        conn, task_id, request_id = self.start_task()
        answer = cpe.rpc_response("GetParameterValues", request_id)
        truncated = answer[: len(answer) // 2]  # a firmware that gave up half-way
        response = conn.post(truncated)
        self.assertEqual((response.status, response.body), (400, b"malformed XML\n"))
        task = self.successResultOf(self.tasks.get(task_id))
        assert task is not None
        self.assertEqual(task.status, "failed")
        assert task.fault is not None
        self.assertEqual(
            task.fault["reason"],
            "the CPE's answer to GetParameterValues could not be read (malformed XML); "
            "it may have carried the request out",
        )
        (closed,) = self.events("session.closed")
        self.assertEqual(closed["outcome"], "protocol_error")
        self.assertEqual(
            closed["reason"], "the answer to GetParameterValues was unreadable: malformed XML"
        )
        self.assertEqual(len(self.acs.engine.registry), 0)
        # Nothing is sent again in the next session.
        self.assertEqual(self.session().post(b"").status, 204)

    def test_an_unreadable_post_on_another_connection_changes_nothing(self) -> None:
        """Only the session's authenticated connection speaks for it: the same garbage with
        its cookie from elsewhere is a plain 400, and the task still waits for its answer."""
        conn, task_id, request_id = self.start_task()
        other = self.acs.connect(peer="198.51.100.9")
        other.cookie = conn.cookie
        self.assertEqual(other.post(b"<soap-env:Envelope").status, 400)
        task = self.successResultOf(self.tasks.get(task_id))
        assert task is not None
        self.assertEqual(task.status, "running")
        answer = cpe.rpc_response("GetParameterValues", request_id)
        self.assertEqual(conn.post(answer).status, 204)
        task = self.successResultOf(self.tasks.get(task_id))
        assert task is not None
        self.assertEqual(task.status, "done")

    def test_in_the_cpes_turn_the_session_goes_on(self) -> None:
        conn = self.session()
        self.assertEqual(conn.post(b"<cwmp:TransferComplete").status, 400)
        self.assertEqual(conn.post(cpe.transfer_complete()).status, 200)
        self.assertEqual(conn.post(b"").status, 204)
        self.assertEqual([e["outcome"] for e in self.events("session.closed")], ["completed"])


class HttpToleranceTests(Base):
    """Two habits of real HTTP clients in CPEs that cost a device its session or its
    access: a Digest ``uri`` written as the absolute ACS URL (RFC 7616 allows it), and the
    session cookie echoed the RFC 2965 way on a new connection."""

    def digest(self, conn: Connection, body: bytes, uri: str, cookie: str = "") -> int:
        headers = {"Cookie": cookie} if cookie else {}
        first = conn.post(body, headers)
        if first.status != 401:
            return first.status
        challenge = digest_client.pick(first.headers["www-authenticate"])
        headers["Authorization"] = digest_client.authorization(challenge, USER, PASSWORD, uri=uri)
        return conn.post(body, headers).status

    def test_absolute_digest_uri_and_rfc2965_cookie_echo(self) -> None:
        conn = self.acs.connect()
        self.assertEqual(self.digest(conn, cpe.inform(), "http://acs.test/"), 200)
        assert conn.cookie is not None
        value = conn.cookie.split("=", 1)[1]
        conn.close()  # the CPE goes on with its session on a new connection
        again = self.acs.connect()
        cookie = f'$Version="1"; cwmpgw_session="{value}"; $Path="/"'
        self.assertEqual(self.digest(again, b"", "http://ACS.test:80/", cookie), 204)
        self.assertEqual([e["outcome"] for e in self.events("session.closed")], ["completed"])
        self.assertEqual(self.events("auth.failed"), [])

    def test_an_absolute_uri_of_another_resource_is_refused(self) -> None:
        for uri in ("http://acs.test/other", "http://elsewhere.test/", "https://acs.test/"):
            conn = self.acs.connect()
            self.assertEqual(self.digest(conn, cpe.inform(), uri), 401, uri)
        reasons = [e["reason"] for e in self.events("auth.failed")]
        self.assertEqual(reasons, ["bad digest header: digest uri does not match request"] * 3)

    def test_rfc2965_cookie_echo_alone(self) -> None:
        conn = self.acs.connect()
        self.assertEqual(self.digest(conn, cpe.inform(), "/"), 200)
        assert conn.cookie is not None
        value = conn.cookie.split("=", 1)[1]
        conn.close()
        again = self.acs.connect()
        cookie = f'$Version = "1" ; cwmpgw_session = "{value}" ; $Path = "/"'
        self.assertEqual(self.digest(again, b"", "/", cookie), 204)
        self.assertEqual([e["outcome"] for e in self.events("session.closed")], ["completed"])
