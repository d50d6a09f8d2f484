"""A command whose answer was lost is not carried out twice when the CPE reports it done.

A second Reboot reboots again and a second Download downloads again: the CPE does not
deduplicate them by CommandKey. When the answer never reached the task store (Redis could
not record it, or the connection dropped after the CPE answered), the CPE's next session
reports the command by its CommandKey: "M Reboot" / "M ScheduleInform" in the Inform, a
TransferComplete for a transfer. The runner then ends the task by that report.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.availability import Unavailable
from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.model import Task
from cwmpgw.tasks.runner import TaskRunner
from tests.support import cpe_envelopes as cpe
from tests.support.memhttp import DEVICE_ID, PASSWORD, USER, Connection, MemoryAcs, digest_post


class ConfirmationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.tasks = MemoryTaskService(events=self.acs.bus, clock=self.acs.clock)
        self.acs.engine._requests = TaskRunner(self.tasks, self.acs.devices)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.tasks.add_device(DEVICE_ID)

    def submit(self, type_: str, args: dict[str, Any]) -> Task:
        task: Task = self.successResultOf(self.tasks.submit(DEVICE_ID, type_, args))
        return task

    def task(self, task_id: str) -> Task:
        task = self.successResultOf(self.tasks.get(task_id))
        assert task is not None
        return task

    def session(self, events: tuple[tuple[str, str], ...] = (("1 BOOT", ""),)) -> Connection:
        conn = self.acs.connect(secure=True)
        r = digest_post(conn, cpe.inform(events=events), USER, PASSWORD)
        self.assertEqual(r.status, 200)
        return conn

    def sent(self, conn: Connection) -> bytes:
        """The ACS's next request after the CPE's empty POST; b"" for the closing 204."""
        r = conn.post(b"")
        self.assertIn(r.status, (200, 204))
        return r.body

    def reboot_answer_not_recorded(self, command_key: str) -> Task:
        """A Reboot sent and answered, whose completion Redis could not record."""
        task = self.submit("Reboot", {"command_key": command_key})
        conn = self.session()
        body = self.sent(conn)
        self.assertIn(b"<cwmp:Reboot>", body)
        self.assertIn(command_key.encode(), body)
        real = self.tasks.complete
        self.tasks.complete = lambda *a: fail(Unavailable("redis"))  # type: ignore[method-assign]
        r = conn.post(cpe.rpc_response("Reboot", cpe_request_id(body)))
        self.tasks.complete = real  # type: ignore[method-assign]
        self.assertEqual(r.status, 204)  # the CPE now reboots
        after = self.task(task.id)
        self.assertEqual((after.status, after.attempts), ("running", 1))
        return after

    def test_reboot_reported_by_m_reboot_is_not_sent_again(self) -> None:
        task = self.reboot_answer_not_recorded("rb-1")
        conn = self.session(events=(("1 BOOT", ""), ("M Reboot", "rb-1")))
        self.assertEqual(self.sent(conn), b"")  # nothing sent: the session closes
        done = self.task(task.id)
        self.assertEqual(done.status, "done")
        self.assertEqual(done.result, {"confirmed_by": "M Reboot"})
        self.assertEqual(done.attempts, 2)
        self.assertEqual([e.data["id"] for e in self.acs.bus.of_type("task.done")], [task.id])

    def test_reboot_without_its_report_is_sent_again_with_the_same_key(self) -> None:
        task = self.reboot_answer_not_recorded("rb-2")
        # The CPE never got the request (or rebooted without saying so): resend it.
        conn = self.session(events=(("1 BOOT", ""), ("M Reboot", "another-key")))
        body = self.sent(conn)
        self.assertIn(b"<cwmp:Reboot>", body)
        self.assertIn(b"rb-2", body)
        self.assertEqual(self.task(task.id).status, "running")

    def test_a_first_attempt_is_never_ended_by_an_old_report(self) -> None:
        # The caller reuses a CommandKey; the Inform reports an older command with it.
        task = self.submit("Reboot", {"command_key": "reused"})
        conn = self.session(events=(("1 BOOT", ""), ("M Reboot", "reused")))
        self.assertIn(b"<cwmp:Reboot>", self.sent(conn))
        self.assertEqual((self.task(task.id).status, self.task(task.id).attempts), ("running", 1))

    def test_factory_reset_reported_by_bootstrap_is_not_sent_again(self) -> None:
        task = self.submit("FactoryReset", {})
        conn = self.session()
        body = self.sent(conn)
        self.assertIn(b"<cwmp:FactoryReset", body)
        conn.close()  # the CPE resets; its answer never arrives
        self.acs.clock.advance(self.acs.session_timeout + 1)
        self.assertEqual(self.task(task.id).status, "queued")
        # Not back from the reset yet (an ordinary periodic session): sent again.
        conn = self.session(events=(("2 PERIODIC", ""),))
        self.assertIn(b"<cwmp:FactoryReset", self.sent(conn))
        conn.close()
        self.acs.clock.advance(self.acs.session_timeout + 1)
        # Back from the reset: BOOTSTRAP reports it; nothing is sent.
        conn = self.session(events=(("0 BOOTSTRAP", ""), ("1 BOOT", "")))
        self.assertEqual(self.sent(conn), b"")
        done = self.task(task.id)
        self.assertEqual((done.status, done.attempts), ("done", 3))
        self.assertEqual(done.result, {"confirmed_by": "0 BOOTSTRAP"})

    def download_answer_lost(self, command_key: str) -> Task:
        """A Download the CPE accepted, the connection lost before its answer arrived."""
        task = self.submit(
            "Download",
            {
                "command_key": command_key,
                "file_type": "1 Firmware Upgrade Image",
                "url": "https://fw.example.net/v2.bin",
            },
        )
        conn = self.session()
        body = self.sent(conn)
        self.assertIn(b"<cwmp:Download>", body)
        conn.close()
        self.acs.clock.advance(self.acs.session_timeout + 1)  # the session times out
        after = self.task(task.id)
        self.assertEqual((after.status, after.attempts), ("queued", 1))
        return after

    def test_download_reported_by_its_transfer_complete_is_not_sent_again(self) -> None:
        task = self.download_answer_lost("fw-1")
        conn = self.session(events=(("7 TRANSFER COMPLETE", ""), ("M Download", "fw-1")))
        r = conn.post(cpe.transfer_complete(command_key="fw-1", request_id="9"))
        self.assertIn(b"TransferCompleteResponse", r.body)
        self.assertEqual(self.sent(conn), b"")
        done = self.task(task.id)
        self.assertEqual((done.status, done.attempts), ("done", 2))
        self.assertEqual(
            done.result,
            {"start_time": "2025-05-25T22:30:01Z", "complete_time": "2025-05-25T22:31:47Z"},
        )

    def test_download_reported_failed_fails_the_task(self) -> None:
        task = self.download_answer_lost("fw-2")
        conn = self.session(events=(("7 TRANSFER COMPLETE", ""), ("M Download", "fw-2")))
        conn.post(cpe.transfer_complete(command_key="fw-2", fault_code=9010, fault_string="x"))
        self.assertEqual(self.sent(conn), b"")
        failed = self.task(task.id)
        self.assertEqual(failed.status, "failed")
        self.assertEqual(failed.fault, {"code": 9010, "string": "x"})

    def test_change_du_state_waits_for_its_du_state_change_complete(self) -> None:
        task = self.submit(
            "ChangeDUState",
            {"operations": [{"type": "install", "url": "https://du.example.net/a.ipk"}] * 2},
        )
        conn = self.session()
        body = self.sent(conn)
        self.assertIn(b"<cwmp:ChangeDUState>", body)
        r = conn.post(cpe.rpc_response("ChangeDUState", cpe_request_id(body)))
        self.assertEqual(r.status, 204)
        self.assertEqual(self.task(task.id).status, "running")  # accepted, not finished
        events = (("11 DU STATE CHANGE COMPLETE", ""), ("M ChangeDUState", task.command_key))
        conn = self.session(events=events)
        report = cpe.du_state_change_complete(
            [{}, {"state": "Failed", "fault_code": 9018, "fault_string": "bad package"}],
            command_key=task.command_key,
        )
        self.assertEqual(conn.post(report).status, 200)
        failed = self.task(task.id)
        self.assertEqual(failed.status, "failed")
        assert failed.fault is not None
        self.assertEqual((failed.fault["code"], failed.fault["string"]), (9018, "bad package"))
        self.assertEqual(
            [r["current_state"] for r in failed.fault["results"]], ["Installed", "Failed"]
        )

    def test_change_du_state_whose_answer_was_lost_ends_by_its_report(self) -> None:
        task = self.submit(
            "ChangeDUState",
            {"operations": [{"type": "install", "url": "https://du.example.net/a.ipk"}]},
        )
        conn = self.session()
        self.assertIn(b"<cwmp:ChangeDUState>", self.sent(conn))
        conn.close()
        self.acs.clock.advance(self.acs.session_timeout + 1)
        events = (("11 DU STATE CHANGE COMPLETE", ""), ("M ChangeDUState", task.command_key))
        conn = self.session(events=events)
        conn.post(cpe.du_state_change_complete(command_key=task.command_key))
        self.assertEqual(self.sent(conn), b"")  # not sent again
        done = self.task(task.id)
        self.assertEqual((done.status, done.attempts), ("done", 2))
        assert done.result is not None
        self.assertEqual(done.result["start_time"], "2025-05-25T22:30:01Z")
        self.assertEqual([r["current_state"] for r in done.result["results"]], ["Installed"])

    def test_a_transfer_complete_of_another_key_does_not_end_it(self) -> None:
        task = self.download_answer_lost("fw-3")
        conn = self.session(events=(("7 TRANSFER COMPLETE", ""),))
        conn.post(cpe.transfer_complete(command_key="fw-other"))
        body = self.sent(conn)
        self.assertIn(b"<cwmp:Download>", body)  # sent again, same key
        self.assertIn(b"fw-3", body)
        self.assertEqual(self.task(task.id).status, "running")
        # What this session kept for its ACS turn is gone with it.
        conn.close()
        self.acs.clock.advance(self.acs.session_timeout + 1)
        self.assertEqual(self.acs.engine._requests._unclaimed, {})  # type: ignore[attr-defined]


def cpe_request_id(body: bytes) -> str:
    """The cwmp:ID of the ACS's request, which the CPE's answer must echo."""
    from lxml import etree

    root = etree.fromstring(body)
    ids = root.xpath("//*[local-name()='ID']/text()")
    assert ids, body
    return str(ids[0])
