"""Tasks end to end: queued in Redis, run by a CPE over real TLS, results and events back.

The CPE is tests/support/cpe_client.py; in the ACS's turn it answers each request with a
schema-valid response (tests/cpe_envelopes.typical_response), as a real CPE would.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from typing import Any

import pytest
from lxml import etree
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from tests.support import cpe_client
from tests.support.cpe_envelopes import du_state_change_complete, typical_response
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.redis_server import unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = "task-cpe", "task-cpe-password"
FILE = "http://127.0.0.1:8080/"

EVERY_TASK: list[tuple[str, dict[str, Any]]] = [
    ("GetRPCMethods", {}),
    ("GetParameterNames", {"parameter_path": "Device.WiFi.", "next_level": True}),
    ("GetParameterValues", {"parameter_names": ["Device.DeviceInfo.SoftwareVersion"]}),
    ("SetParameterValues", {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "home"}]}),
    ("GetParameterAttributes", {"parameter_names": ["Device.WiFi.SSID.1.SSID"]}),
    (
        "SetParameterAttributes",
        {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "notification": 2}]},
    ),
    ("AddObject", {"object_name": "Device.WiFi.SSID."}),
    ("DeleteObject", {"object_name": "Device.WiFi.SSID.3."}),
    ("Download", {"file_type": "1 Firmware Upgrade Image", "url": FILE + "fw.bin"}),
    ("Upload", {"file_type": "1 Vendor Configuration File", "url": FILE + "up"}),
    ("ScheduleInform", {"delay_seconds": 60}),
    (
        "ScheduleDownload",
        {
            "file_type": "1 Firmware Upgrade Image",
            "url": FILE + "fw2.bin",
            "time_windows": [{"window_start": 0, "window_end": 3600}],
        },
    ),
    ("CancelTransfer", {"command_key": "some-transfer"}),
    ("GetQueuedTransfers", {}),
    ("GetAllQueuedTransfers", {}),
    ("ChangeDUState", {"operations": [{"type": "install", "url": FILE + "du.ipk"}]}),
    ("SetVouchers", {"vouchers": ["dm91Y2hlcg=="]}),
    ("GetOptions", {}),
    ("refresh", {"path": "Device.WiFi."}),
    ("Reboot", {}),
    ("FactoryReset", {}),
]


class ScriptedCpe:
    """Answers every ACS request with a typical response; counts what it was asked."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.asked: Counter[str] = Counter()
        self.stop_after = stop_after
        self.keys: list[tuple[str, str]] = []  # (method, ParameterKey or CommandKey) as received

    def __call__(self, envelope: bytes) -> str | None:
        root = etree.fromstring(envelope)
        body = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
        request = body[0]
        method = etree.QName(request).localname
        request_id = root.find(".//{urn:dslforum-org:cwmp-1-2}ID").text
        key = request.find("ParameterKey")
        if key is None:
            key = request.find("CommandKey")
        if key is not None:
            self.keys.append((method, key.text or ""))
        if self.stop_after is not None and sum(self.asked.values()) >= self.stop_after:
            raise ConnectionAbortedError("the CPE drops the connection mid-task")
        self.asked[method] += 1
        return typical_response(method, request_id).decode()


@pytest.mark.usefixtures("redis_for_class")
class TaskTests(TestCase):
    redis_server: Any

    async def start(self) -> GatewayService:
        service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            gateway={"node": f"node-{os.urandom(2).hex()}"},
            provision={"credentials": True, "periodic_inform": True},  # as shipped
        )
        self.url = acs_url(service)
        return service

    async def setUp(self) -> None:  # type: ignore[override]
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-tasks-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        self.service = await self.start()
        self.cafile = cafile(self.dir)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        await import_into(
            self,
            f"device_id,username,password\n{DEVICE_ID},{USER},{PASSWORD}\n",
            self.dir,
            self.redis_server.url,
            self.prefix,
        )
        first = await self.session(None)  # the device must be known before tasks are queued
        self.assertEqual(first[-1].status, 204)

    def session(self, cpe: ScriptedCpe | None, **kw: Any) -> Any:
        return deferToThread(
            cpe_client.run_session, self.url, USER, PASSWORD, cafile=self.cafile, answer=cpe, **kw
        )

    def task_events(self) -> list[dict[str, Any]]:
        events = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in events if e["type"].startswith("task.")]

    async def test_every_task_type_runs_once_in_order(self) -> None:
        tasks = [await self.service.tasks.submit(DEVICE_ID, t, a) for t, a in EVERY_TASK]
        cpe = ScriptedCpe()
        exchanges = await self.session(cpe)
        self.assertEqual(exchanges[-1].status, 204)
        expected = Counter(t for t, _ in EVERY_TASK if t != "refresh")
        expected.update({"GetParameterNames": 1, "GetParameterValues": 1})  # refresh's calls
        self.assertEqual(cpe.asked, expected)

        final = {t.type: await self.service.tasks.get(t.id) for t in tasks}
        waiting = sorted(k for k, t in final.items() if t.status == "running")
        self.assertEqual(waiting, ["ChangeDUState", "Download", "ScheduleDownload", "Upload"])
        self.assertEqual({t.status for k, t in final.items() if k not in waiting}, {"done"})
        self.assertEqual(final["AddObject"].result["instance_number"], 3)
        self.assertEqual(final["GetRPCMethods"].result["methods"][0], "GetRPCMethods")

        # They finish in a later session, with the TransferComplete (DUStateChangeComplete)
        # of their keys.
        keys = [final[k].command_key for k in waiting if k != "ChangeDUState"]
        du_key = final["ChangeDUState"].command_key
        self.assertTrue(all(keys) and du_key)
        du_report = du_state_change_complete(command_key=du_key).decode()
        await self.session(
            None, transfer_complete=keys, reports=[du_report], event="7 TRANSFER COMPLETE"
        )
        for kind in waiting:
            self.assertEqual((await self.service.tasks.get(final[kind].id)).status, "done")
        du = await self.service.tasks.get(final["ChangeDUState"].id)
        self.assertEqual(
            [(r["current_state"], r["fault_code"]) for r in du.result["results"]],
            [("Installed", 0)],
        )

        done = [e for e in self.task_events() if e["type"] == "task.done"]
        self.assertEqual(sorted(e["data"]["id"] for e in done), sorted(t.id for t in tasks))
        queued = [e["data"]["id"] for e in self.task_events() if e["type"] == "task.queued"]
        self.assertEqual(queued, [t.id for t in tasks])
        device = self.redis.hgetall(self.prefix + "device:" + DEVICE_ID + ":params")
        self.assertEqual(json.loads(device["Device.WiFi.SSID.1.SSID"])[0], "home")

    async def test_restart_mid_queue_loses_nothing_and_repeats_nothing(self) -> None:
        kinds = ["SetParameterValues", "AddObject", "Reboot"]
        args = {k: a for k, a in EVERY_TASK}
        tasks = [await self.service.tasks.submit(DEVICE_ID, k, args[k]) for k in kinds]
        dropping = ScriptedCpe(stop_after=1)  # answers the first request, then drops
        with self.assertRaises(ConnectionAbortedError):
            await self.session(dropping)
        await self.service.stopService()  # the gateway restarts with AddObject sent, unanswered
        self.service = await self.start()

        cpe = ScriptedCpe()
        exchanges = await self.session(cpe)
        self.assertEqual(exchanges[-1].status, 204)
        total = dropping.asked + cpe.asked
        self.assertEqual(total, Counter({"SetParameterValues": 1, "AddObject": 1, "Reboot": 1}))
        for task in tasks:
            self.assertEqual((await self.service.tasks.get(task.id)).status, "done")
        # AddObject was sent twice, both times with the task's own ParameterKey, so the
        # CPE can tell it is the same request.
        sent = [k for m, k in dropping.keys + cpe.keys if m == "AddObject"]
        self.assertEqual(sent, [tasks[1].args["parameter_key"]] * 2)
        self.assertTrue(sent[0])


@pytest.mark.usefixtures("redis_for_class")
class DrainTests(TaskTests):
    """Stopping the gateway (SIGTERM) lets a live session finish; nothing is cut short."""

    test_every_task_type_runs_once_in_order = None  # type: ignore[assignment]
    test_restart_mid_queue_loses_nothing_and_repeats_nothing = None  # type: ignore[assignment]

    async def test_stop_drains_a_live_session(self) -> None:
        args = dict(EVERY_TASK)
        kinds = ["SetParameterValues", "AddObject", "Reboot"]
        tasks = [await self.service.tasks.submit(DEVICE_ID, k, args[k]) for k in kinds]
        stopping: list[Any] = []
        service = self.service

        class StopsTheGateway(ScriptedCpe):
            def __call__(self, envelope: bytes) -> str | None:
                if not stopping:  # the first ACS request: now the operator stops the node
                    stopping.append(True)
                    reactor.callFromThread(lambda: stopping.append(service.stopService()))
                return super().__call__(envelope)

        cpe = StopsTheGateway()
        exchanges = await self.session(cpe)
        await stopping[1]
        self.assertEqual(exchanges[-1].status, 204)
        self.assertEqual(sum(cpe.asked.values()), 3)
        for task in tasks:
            self.assertEqual((await self._task_status(task.id)), "done")
        closed = [e for e in self._events() if e["type"] == "session.closed"]
        self.assertEqual(closed[-1]["data"]["outcome"], "completed")
        with self.assertRaises(OSError):  # nothing listens any more
            await self.session(None)

    async def _task_status(self, task_id: str) -> str:
        raw = self.redis.get(f"{self.prefix}task:{task_id}")
        return str(json.loads(raw)["status"])

    def _events(self) -> list[dict[str, Any]]:
        return [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
