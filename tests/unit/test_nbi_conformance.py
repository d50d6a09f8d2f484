"""Every API answer against the OpenAPI document the API serves.

The gateway here is the real one in memory: NbiResource and NbiSite over the real device
directory on the in-memory device store (which keeps text, as Redis does), the in-memory
task service and credential stores. Each request's answer is checked against the schema
that the served ``/openapi.json`` declares for its route and status (tests/support/json_schema.py),
every documented (route, status) pair is reached, and a task of every type is queued
with arguments that its generated schema accepts.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.files.campaigns import CampaignConflict, CampaignSpec
from cwmpgw.files.model import FileInfo
from cwmpgw.files.store import FileStore, MemoryFileIndex
from cwmpgw.fleet.bulk import MemoryBulkService
from cwmpgw.fleet.inventory import MemoryInventory
from cwmpgw.fleet.profiles import MemoryProfileStore
from cwmpgw.nbi.api import NbiResource, NbiSite
from cwmpgw.nbi.auth import TokenAuthorizer
from cwmpgw.nbi.directory import DeviceDirectory
from cwmpgw.nbi.tokens import token_sha256
from cwmpgw.provision.provisioner import MemoryRotations
from cwmpgw.store.interfaces import InformRecord
from cwmpgw.store.memory import (
    MemoryConnReqCredentialStore,
    MemoryCredentialStore,
    MemoryDeviceStore,
)
from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.plans import TASK_TYPES, args_schema
from tests.support.json_schema import SchemaError, assert_valid, check_subset, errors
from tests.support.nbikit import BAD_ARGS, EXAMPLE_ARGS, FakeHealth, FakeWaker, Pending, Response
from tests.support.paths import REPO

TOKEN = "conformance-token-0123456789abcdefghijklmnop"
NOW = 1_748_211_869.0
DEV = "9CA2F4-EC220_G5_V3-22275K2000315"
DEV2 = "00259E-HG%20X-ABC"

#: (operationId, status) pairs the document lists that these fakes cannot produce, and why.
UNREACHABLE = {
    ("set_credentials", 404): "the real directory takes credentials for any id (pre-provisioning)",
}


class FakeCampaigns:
    """Campaigns as the API sees them: the real request checks, a canned engine."""

    def __init__(self) -> None:
        self.views: dict[str, dict[str, Any]] = {}

    def create(self, spec: CampaignSpec, file: FileInfo) -> Deferred[dict[str, Any]]:
        campaign_id = f"c{len(self.views) + 1:04d}"
        total = len(spec.devices or ())
        view = {
            "id": campaign_id,
            **spec.to_dict(),
            "target_version": file.software_version,
            "file_type": file.file_type,
            "status": "running",
            "reason": "",
            "wave": 0,
            "total": total,
            "dispatched": 0,
            "counts": {
                "pending": total,
                "queued": 0,
                "transferred": 0,
                "upgraded": 0,
                "failed": 0,
                "skipped": 0,
            },
            "wave_progress": [{"size": total, "failed": 0}],
            "created": NOW,
            "updated": NOW,
        }
        self.views[campaign_id] = view
        return Deferred.fromCoroutine(_value(view))

    def list(self) -> Deferred[list[dict[str, Any]]]:
        return Deferred.fromCoroutine(_value(list(self.views.values())))

    def get(self, campaign_id: str) -> Deferred[dict[str, Any] | None]:
        return Deferred.fromCoroutine(_value(self.views.get(campaign_id)))

    def control(self, campaign_id: str, action: str) -> Deferred[dict[str, Any] | None]:
        view = self.views.get(campaign_id)
        if view is None:
            return Deferred.fromCoroutine(_value(None))
        to = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
        if view["status"] in ("aborted", "completed") or view["status"] == to:
            return Deferred.fromCoroutine(_raise(CampaignConflict(f"it is {view['status']}")))
        view["status"] = to
        return Deferred.fromCoroutine(_value(view))


async def _value(value: Any) -> Any:
    return value


async def _raise(e: Exception) -> Any:
    raise e


class Gateway:
    """The API over real in-memory parts, and a client that speaks HTTP to it."""

    def __init__(self) -> None:
        import tempfile

        self.clock = Clock()
        self.clock.advance(NOW)
        self.file_dir = tempfile.mkdtemp(prefix="cwmpgw-conformance-")
        self.files = FileStore(self.file_dir, MemoryFileIndex(), clock=self.clock, node="n1")
        self.campaigns = FakeCampaigns()
        self.store = MemoryDeviceStore()
        self.tasks = MemoryTaskService(
            events=MemoryEventBus(), clock=self.clock, devices=self.store.devices
        )
        self.directory = DeviceDirectory(
            self.store,
            MemoryCredentialStore(),
            MemoryConnReqCredentialStore(),
            realm="cwmpgw",
            inventory=MemoryInventory(self.store, clock=self.clock, online_window=600),
            tasks=self.tasks,
            rotations=MemoryRotations(),
        )
        self.health = FakeHealth()
        self.bulks = MemoryBulkService(self.clock)
        self.resource = NbiResource(
            tasks=self.tasks,
            devices=self.directory,
            waker=FakeWaker(),
            health=self.health,
            authorizer=TokenAuthorizer([token_sha256(TOKEN)]),
            clock=self.clock,
            max_body_bytes=4096,
            max_wait=60,
            bulks=self.bulks,
            profiles=MemoryProfileStore(),
            files=self.files,
            campaigns=self.campaigns,
            max_file_bytes=1_000_000,
        )
        self.site = NbiSite(self.resource, reactor=self.clock)
        self.inform(DEV, "TP-Link", NOW - 100.5, events=("0 BOOTSTRAP", "1 BOOT"))
        self.inform(DEV2, "Huawei", NOW - 10, events=("2 PERIODIC",))

    def inform(self, device_id: str, manufacturer: str, ts: float, events: tuple[str, ...]) -> None:
        oui, product_class, serial = device_id.split("-")
        record = InformRecord(
            device_id=device_id,
            device=DeviceId(manufacturer, oui, product_class, serial),
            ts=ts,
            source="192.0.2.7",
            cwmp_version="1.4",
            namespace="urn:dslforum-org:cwmp-1-2",
            events=tuple(EventStruct(code, "") for code in events),
            parameters=(
                ParameterValue("Device.DeviceInfo.SoftwareVersion", "1.0.4"),
                ParameterValue("Device.DeviceInfo.UpTime", "42", "xsd:unsignedInt"),
                ParameterValue(
                    "Device.ManagementServer.ConnectionRequestURL", "http://192.0.2.7:7547/cr"
                ),
            ),
        )
        self.store.record_inform(record)

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Pending:
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        hdrs = {"Host": "nbi.test"}
        if data or method in ("POST", "PUT"):
            hdrs["Content-Length"] = str(len(data))
        if data and raw is None:
            hdrs["Content-Type"] = "application/json"
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        hdrs.update(headers or {})
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        protocol.dataReceived(head.encode() + b"\r\n" + data)
        return Pending(transport, protocol)


def dev_path(device_id: str, suffix: str = "") -> str:
    return "/devices/" + quote(device_id, safe="") + suffix


class ConformanceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = Gateway()
        r = self.gw.send("GET", "/openapi.json", token=None).response()
        assert r is not None and r.status == 200
        self.doc: dict[str, Any] = json.loads(r.body)
        self.seen: set[tuple[str, int]] = set()

    # -- checking one answer ----------------------------------------------------------------

    def operation(self, method: str, url: str) -> dict[str, Any]:
        path = url.partition("?")[0]
        for template, item in self.doc["paths"].items():
            pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, path) and method.lower() in item:
                op: dict[str, Any] = item[method.lower()]
                return op
        raise AssertionError(f"{method} {path} is not in the served document")

    def check(self, r: Response, method: str, url: str, status: int) -> Any:
        """The answer has this status, which the document lists for the route, and the
        body (and headers) that the document declares for it."""
        op = self.operation(method, url)
        where = f"{method} {url} -> {r.status}"
        self.assertEqual(r.status, status, (where, r.body[:300]))
        self.assertIn(str(status), op["responses"], where)
        declared = op["responses"][str(status)]
        self.seen.add((op["operationId"], status))
        for header, spec in declared.get("headers", {}).items():
            if spec["required"]:
                self.assertIsNotNone(r.header(header), (where, header))
        if "content" not in declared:
            self.assertEqual(r.body, b"", where)
            return None
        if "application/json" not in declared["content"]:
            (media,) = declared["content"]
            self.assertEqual(r.header("content-type"), media, where)
            return r.body
        self.assertEqual(r.header("content-type"), "application/json", where)
        body = json.loads(r.body)
        assert_valid(self.doc, declared["content"]["application/json"]["schema"], body, where)
        return body

    def call(self, method: str, url: str, status: int, body: Any = None, **kwargs: Any) -> Any:
        op = self.operation(method, url)
        json_body = "application/json" in op.get("requestBody", {}).get("content", {})
        if body is not None and json_body and "raw" not in kwargs:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            if status < 300:  # a request the API takes is one the document allows
                assert_valid(self.doc, schema, body, f"request {method} {url}")
        pending = self.gw.send(method, url, body, **kwargs)
        for _ in range(10_000):  # a file's bytes come from a pull producer: pull
            producer = getattr(pending.protocol, "_requestProducer", None)
            if producer is None:
                break
            # The pull producer behind Twisted's pull-to-push wrapper (whose cooperator
            # needs a running reactor): pulled here by hand.
            getattr(producer, "_producer", producer).resumeProducing()
        r = pending.response()
        assert r is not None, f"{method} {url}: no answer"
        return self.check(r, method, url, status)

    def queue(self, task_type: str = "Reboot", **body: Any) -> dict[str, Any]:
        task: dict[str, Any] = self.call(
            "POST", dev_path(DEV, "/tasks"), 201, {"type": task_type, **body}
        )
        return task

    # -- the tests ----------------------------------------------------------------------------

    def test_device_answers_are_typed_as_documented(self) -> None:
        """Numbers are numbers and last_events an array: what docs/api.md shows."""
        device = self.call("GET", dev_path(DEV), 200)
        self.assertEqual(device["last_inform"], NOW - 100.5)
        self.assertEqual(device["first_seen"], NOW - 100.5)
        self.assertEqual(device["inform_count"], 1)
        self.assertEqual(
            device["last_events"],
            [{"code": "0 BOOTSTRAP", "command_key": ""}, {"code": "1 BOOT", "command_key": ""}],
        )
        self.assertEqual(
            device["parameters"]["Device.DeviceInfo.UpTime"],
            {"value": "42", "type": "xsd:unsignedInt"},
        )
        page = self.call("GET", "/devices?limit=1&oui=9CA2F4", 200)
        self.assertEqual([d["id"] for d in page["devices"]], [DEV])
        self.assertEqual(page["devices"][0], {k: v for k, v in device.items() if k != "parameters"})
        page = self.call("GET", "/devices?limit=1", 200)
        self.assertEqual([d["id"] for d in page["devices"]], [DEV2])  # by id
        rest = self.call("GET", "/devices?cursor=" + quote(page["next_cursor"], safe=""), 200)
        self.assertEqual([d["id"] for d in rest["devices"]], [DEV])

    def test_a_task_of_every_type(self) -> None:
        self.assertEqual(set(EXAMPLE_ARGS), set(TASK_TYPES))
        for task_type, args in EXAMPLE_ARGS.items():
            task = self.queue(task_type, args=args)
            self.assertEqual((task["type"], task["status"]), (task_type, "queued"))
            fetched = self.call("GET", "/tasks/" + task["id"], 200)
            self.assertEqual(fetched["args"], task["args"])
        listed = self.call("GET", dev_path(DEV, "/tasks"), 200)
        self.assertEqual([t["type"] for t in listed["tasks"]], list(EXAMPLE_ARGS))

    def test_arguments_refused_by_the_server_are_refused_by_the_schema(self) -> None:
        schema = self.doc["components"]["schemas"]["TaskRequest"]
        for task_type, args in BAD_ARGS:
            body = {"type": task_type, "args": args}
            answer = self.call("POST", dev_path(DEV, "/tasks"), 400, body)
            self.assertEqual(answer["error"]["code"], "invalid_task", body)
            self.assertTrue(errors(self.doc, schema, body), f"the schema accepts {body}")
        for body in ({"type": "Rebooot"}, {"type": "Reboot", "args": []}, {"args": {}}):
            self.call("POST", dev_path(DEV, "/tasks"), 400, body)
            self.assertTrue(errors(self.doc, schema, body), f"the schema accepts {body}")

    def test_every_route_and_documented_status(self) -> None:
        gw = self.gw
        nope = dev_path("nope-x-1")
        # health and the document
        self.call("GET", "/healthz", 200)
        gw.health.report = {"ok": False, "node": "n1", "redis": False, "redis_latency_ms": 0.4}
        self.call("GET", "/healthz", 503)
        gw.health.report = RuntimeError("the check itself broke")
        self.call("GET", "/healthz", 503)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.call("GET", "/openapi.json", 200)
        # devices
        self.call("GET", "/devices?oui=00259E&informed_after=2025-05-25T00:00:00Z", 200)
        self.call("GET", "/devices?limit=0", 400)
        self.call("GET", "/devices?source=nowhere", 400)
        self.call("GET", "/devices?tags=pilot&online=true&software_version=1.0,2.0", 200)
        # tags
        self.call("POST", dev_path(DEV, "/tags"), 200, {"add": ["pilot", "north"]})
        self.call("POST", dev_path(DEV, "/tags"), 400, {"add": ["not a tag"]})
        self.call("POST", dev_path(DEV, "/tags"), 400, {})
        self.call("POST", dev_path(DEV, "/tags"), 409, {"add": [f"t{i}" for i in range(64)]})
        self.call("POST", nope + "/tags", 404, {"add": ["pilot"]})
        # bulk tasks
        bulk_body = {"selector": {"tags": ["pilot"]}, "task": {"type": "Reboot"}}
        bulk = self.call("POST", "/bulk", 202, {**bulk_body, "idempotency_key": "k1"})
        self.call("POST", "/bulk", 200, {**bulk_body, "idempotency_key": "k1"})
        self.call(
            "POST",
            "/bulk",
            422,
            {**bulk_body, "task": {"type": "FactoryReset"}, "idempotency_key": "k1"},
        )
        self.call("POST", "/bulk", 400, {"selector": {"colour": "red"}, "task": {"type": "Reboot"}})
        self.call("POST", "/bulk", 400, {"device_ids": ["a"], "task": {"type": "Rebooot"}})
        self.call("POST", "/bulk", 400, {"task": {"type": "Reboot"}})
        self.call(
            "POST", "/bulk", 413, raw=b" " * 5000, headers={"Content-Type": "application/json"}
        )
        self.call("POST", "/bulk", 415, raw=b"{}", headers={"Content-Type": "text/plain"})
        self.call("GET", "/bulk", 200)
        self.call("GET", "/bulk/" + bulk["id"], 200)
        self.call("GET", "/bulk/nope", 404)
        self.call("DELETE", "/bulk/" + bulk["id"], 202)
        gw.bulks.raw[bulk["id"]]["status"] = "cancelled"
        self.call("DELETE", "/bulk/" + bulk["id"], 200)
        self.call("DELETE", "/bulk/nope", 404)
        # profiles
        profile = {
            "selector": {"tags": ["pilot"]},
            "when": "once",
            "parameters": [
                {"name": "ManagementServer.PeriodicInformInterval", "value": 3600},
                {"name": "Device.WiFi.SSID.1.SSID", "value": "home", "type": "string(32)"},
            ],
        }
        created = self.call("PUT", "/profiles/wifi", 201, profile)
        self.assertEqual(
            created["parameters"][0],
            {
                "name": "ManagementServer.PeriodicInformInterval",
                "value": "3600",
                "type": "xsd:unsignedInt",
            },
        )
        changed = self.call("PUT", "/profiles/wifi", 200, {**profile, "when": "every"})
        self.assertGreater(changed["version"], created["version"])
        read_only = [{"name": "DeviceInfo.SoftwareVersion", "value": "2"}]
        self.call("PUT", "/profiles/bad", 422, {"parameters": read_only})
        self.call("PUT", "/profiles/bad", 400, {"parameters": []})
        self.call("PUT", "/profiles/bad%20name", 400, profile)
        self.call(
            "PUT", "/profiles/x", 413, raw=b" " * 5000, headers={"Content-Type": "application/json"}
        )
        self.call("PUT", "/profiles/x", 415, raw=b"{}", headers={"Content-Type": "text/plain"})
        self.assertEqual(
            [p["name"] for p in self.call("GET", "/profiles", 200)["profiles"]], ["wifi"]
        )
        self.call("GET", "/profiles/wifi", 200)
        self.call("GET", "/profiles/nope", 404)
        self.call("DELETE", "/profiles/wifi", 204)
        self.call("DELETE", "/profiles/wifi", 404)
        tags_url = dev_path(DEV, "/tags")
        self.call(
            "POST", tags_url, 413, raw=b" " * 5000, headers={"Content-Type": "application/json"}
        )
        self.call("POST", tags_url, 415, raw=b"{}", headers={"Content-Type": "text/plain"})
        self.assertEqual(self.call("GET", "/tags", 200), {"tags": {"north": 1, "pilot": 1}})
        page = self.call("GET", "/devices?tags=pilot", 200)
        self.assertEqual([d["id"] for d in page["devices"]], [DEV])
        self.call("GET", dev_path(DEV), 200)
        self.call("GET", nope, 404)
        # credentials
        creds = {"username": DEV, "password": "a long random password"}
        url = dev_path(DEV, "/credentials")
        self.call(
            "PUT", url, 204, {**creds, "connection_request": {"username": "u", "password": ""}}
        )
        self.call("PUT", dev_path(DEV2, "/credentials"), 409, creds)
        self.call("PUT", url, 400, {"username": DEV})
        self.call("PUT", url, 400, raw=b"{", headers={"Content-Type": "application/json"})
        self.call("PUT", url, 413, raw=b" " * 5000, headers={"Content-Type": "application/json"})
        self.call("PUT", url, 415, raw=b"{}", headers={"Content-Type": "text/plain"})
        self.call("POST", dev_path(DEV, "/credentials/rotate"), 202)
        self.call("POST", dev_path("nope-x-1", "/credentials/rotate"), 404)
        # tasks
        tasks_url = dev_path(DEV, "/tasks")
        first = self.call("POST", tasks_url + "?connection_request=true", 201, {"type": "Reboot"})
        self.assertEqual(first["connection_request"]["outcome"], "ok")
        keyed = {"type": "FactoryReset", "idempotency_key": "job-1"}
        self.call("POST", tasks_url, 201, keyed)
        self.call("POST", tasks_url, 200, keyed)
        self.call("POST", tasks_url, 422, {**keyed, "expires_in": 60})
        self.call("POST", tasks_url, 400, {"type": "Reboot", "expires_in": -1})
        refused = self.call(
            "POST",
            tasks_url,
            422,
            {
                "type": "SetParameterValues",
                "args": {"parameters": [{"name": "Device.DeviceInfo.UpTime", "value": "1"}]},
            },
        )
        self.assertEqual(refused["error"]["code"], "data_model")
        self.assertIn(
            "args.parameters[0]: Device.DeviceInfo.UpTime: read-only", refused["error"]["message"]
        )
        self.call("POST", dev_path("nope-x-1", "/tasks"), 404, {"type": "Reboot"})
        self.call(
            "POST", tasks_url, 413, raw=b" " * 5000, headers={"Content-Type": "application/json"}
        )
        self.call("POST", tasks_url, 415, raw=b"{}", headers={"Content-Type": "text/plain"})
        waiting = gw.send("POST", tasks_url + "?wait=5", {"type": "GetRPCMethods"})
        gw.clock.advance(5)
        r = waiting.response()
        assert r is not None
        self.assertEqual(self.check(r, "POST", tasks_url + "?wait=5", 202)["status"], "queued")
        # A task that ends while the client waits: 200 with its result.
        done = gw.send("POST", dev_path(DEV2, "/tasks") + "?wait=30", {"type": "GetRPCMethods"})
        running: Deferred[Any] = gw.tasks.next_for_device(DEV2)
        task = self.successResultOf(running)
        gw.tasks.complete(task, {"methods": ["Inform", "GetRPCMethods"]})
        r = done.response()
        assert r is not None
        body = self.check(r, "POST", dev_path(DEV2, "/tasks") + "?wait=30", 200)
        self.assertEqual(
            (body["status"], body["result"]), ("done", task.evolve().result or body["result"])
        )
        self.call("GET", tasks_url, 200)
        self.call("GET", dev_path("nope-x-1", "/tasks"), 404)
        self.call("GET", "/tasks/" + first["id"], 200)
        self.call("GET", "/tasks/nope", 404)
        started = self.successResultOf(gw.tasks.next_for_device(DEV))
        self.assertEqual(started.id, first["id"])
        self.call("DELETE", "/tasks/" + first["id"], 409)  # running
        queued = self.queue("GetParameterValues", args={"parameter_names": ["Device."]})
        self.call("DELETE", "/tasks/" + queued["id"], 200)
        self.call("DELETE", "/tasks/" + queued["id"], 200)  # already cancelled
        self.call("DELETE", "/tasks/nope", 404)
        # files
        self.addCleanup(__import__("shutil").rmtree, gw.file_dir, True)
        image = b"CWMPGW-SIM-FIRMWARE 2.0\n" + bytes(range(256)) * 40
        created = self.call(
            "POST",
            "/files?name=fw.bin&file_type=1%20Firmware%20Upgrade%20Image&software_version=2.0",
            201,
            raw=image,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.assertEqual((created["size"], created["software_version"]), (len(image), "2.0"))
        self.call("POST", "/files?name=a/b&file_type=1%20Firmware%20Upgrade%20Image", 400, raw=b"x")
        self.call("POST", "/files?name=a&file_type=9%20Nope", 400, raw=b"x")
        self.call("POST", "/files?name=big&file_type=2%20Web%20Content", 413, raw=b"x" * 1_000_001)
        listed = self.call("GET", "/files?limit=1", 200)
        self.assertEqual([f["id"] for f in listed["files"]], [created["id"]])
        self.call("GET", "/files?origin=elsewhere", 400)
        self.call("GET", "/files/" + created["id"], 200)
        self.call("GET", "/files/fnope", 404)
        content = self.call("GET", "/files/" + created["id"] + "/content", 200)
        self.assertEqual(content, image)
        self.call("GET", "/files/fnope/content", 404)
        # campaigns
        request = {"file": created["id"], "devices": [DEV, DEV2], "waves": ["50%", "100%"]}
        campaign = self.call("POST", "/campaigns", 201, request)
        self.assertEqual((campaign["total"], campaign["target_version"]), (2, "2.0"))
        self.call("POST", "/campaigns", 400, {**request, "waves": ["50%", "10%"]})
        self.call("POST", "/campaigns", 400, {"file": created["id"]})
        self.call("POST", "/campaigns", 404, {**request, "file": "fnope"})
        self.call(
            "POST", "/campaigns", 413, raw=b" " * 5000, headers={"Content-Type": "application/json"}
        )
        self.call("POST", "/campaigns", 415, raw=b"{}", headers={"Content-Type": "text/plain"})
        self.call("GET", "/campaigns", 200)
        url = "/campaigns/" + campaign["id"]
        self.call("GET", url, 200)
        self.call("GET", "/campaigns/cnope", 404)
        self.call("POST", url + "/pause", 200)
        self.call("POST", url + "/pause", 409)
        self.call("POST", url + "/resume", 200)
        self.call("POST", url + "/resume", 409)
        self.call("POST", url + "/abort", 200)
        self.call("POST", url + "/abort", 409)
        for action in ("pause", "resume", "abort"):
            self.call("POST", f"/campaigns/cnope/{action}", 404)
        self.call("DELETE", "/files/" + created["id"], 204)
        self.call("DELETE", "/files/" + created["id"], 404)
        # forgetting the device
        self.call("DELETE", dev_path(DEV), 204)
        self.call("DELETE", dev_path(DEV), 404)
        # 401 without a token, 500 for a bug and 503 for storage trouble, on every route
        for path, item in self.doc["paths"].items():
            for method, op in item.items():
                url = (
                    path.replace("{device_id}", quote(DEV2, safe=""))
                    .replace("{task_id}", "t1")
                    .replace("{bulk_id}", "b1")
                    .replace("{profile_name}", "p1")
                    .replace("{file_id}", "f1")
                    .replace("{campaign_id}", "c1")
                )
                if op.get("security") != []:
                    self.call(method.upper(), url, 401, token=None)
                for error, status in ((RuntimeError("bug"), 500), (ConnectionRefusedError(), 503)):
                    if str(status) not in op["responses"] or (
                        status == 503 and op.get("security") == []  # /healthz's own 503
                    ):
                        continue
                    self.break_handler(op["operationId"], error)
                    self.call(method.upper(), url, status, self.example_body(op))
                    self.restore_handler(op["operationId"])
                    self.flushLoggedErrors(RuntimeError)
        documented = {
            (op["operationId"], int(status))
            for item in self.doc["paths"].values()
            for op in item.values()
            for status in op["responses"]
        }
        self.assertEqual(documented - self.seen, set(UNREACHABLE))

    # -- helpers ---------------------------------------------------------------------------

    def break_handler(self, operation: str, error: Exception) -> None:
        async def broken(call: Any) -> Any:
            raise error

        handlers = self.gw.resource._handlers
        self._saved = handlers[operation]
        handlers[operation] = broken

    def restore_handler(self, operation: str) -> None:
        self.gw.resource._handlers[operation] = self._saved

    def example_body(self, op: dict[str, Any]) -> Any:
        if "application/json" not in op.get("requestBody", {}).get("content", {}):
            return None
        name = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rpartition("/")[2]
        return {
            "TaskRequest": {"type": "Reboot"},
            "Credentials": {"username": "u", "password": "p"},
            "TagChange": {"add": ["pilot"]},
            "BulkRequest": {"selector": {}, "task": {"type": "Reboot"}},
            "ProfileRequest": {"parameters": [{"name": "Time.NTPServer1", "value": "ntp"}]},
            "CampaignRequest": {"file": "f1", "devices": ["d"]},
        }[name]


class JsonSchemaSubsetTests(SynchronousTestCase):
    """The checker the tests above trust."""

    def test_types(self) -> None:
        root: dict[str, Any] = {}
        self.assertEqual(errors(root, {"type": "integer"}, 3), [])
        for wrong in (True, 3.0, "3", None):
            self.assertTrue(errors(root, {"type": "integer"}, wrong), wrong)
        self.assertTrue(errors(root, {"type": "number"}, False))
        self.assertEqual(errors(root, {"type": ["string", "null"]}, None), [])
        self.assertTrue(errors(root, {"type": "array"}, "[]"))

    def test_enum_and_const_compare_as_json(self) -> None:
        root: dict[str, Any] = {}
        self.assertTrue(errors(root, {"enum": [0, 1]}, True))
        self.assertEqual(errors(root, {"enum": [1]}, 1.0), [])
        self.assertTrue(errors(root, {"const": "a"}, "b"))

    def test_objects_arrays_and_references(self) -> None:
        root = {"defs": {"n": {"type": "integer", "minimum": 1}}}
        schema = {
            "type": "object",
            "required": ["a"],
            "additionalProperties": False,
            "properties": {"a": {"type": "array", "items": {"$ref": "#/defs/n"}, "maxItems": 2}},
        }
        self.assertEqual(errors(root, schema, {"a": [1, 2]}), [])
        self.assertEqual(len(errors(root, schema, {"a": [0, 1, 2], "b": 1})), 3)
        self.assertTrue(errors(root, schema, {}))
        self.assertRaises(SchemaError, errors, root, {"$ref": "#/defs/missing"}, 1)

    def test_one_of_means_exactly_one(self) -> None:
        root: dict[str, Any] = {}
        schema = {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 1}]}
        self.assertEqual(errors(root, schema, "ab"), [])
        self.assertTrue(errors(root, schema, "a"))  # both
        self.assertTrue(errors(root, schema, 1))  # neither

    def test_keywords_outside_the_subset_are_refused(self) -> None:
        self.assertRaises(SchemaError, errors, {}, {"anyOf": [{"type": "string"}]}, "x")

    def test_the_served_document_stays_inside_the_subset(self) -> None:
        r = Gateway().send("GET", "/openapi.json", token=None).response()
        assert r is not None
        doc = json.loads(r.body)
        for name in doc["components"]["schemas"]:
            schema = doc["components"]["schemas"][name]
            check_subset(schema, name)


class DocsTests(SynchronousTestCase):
    """docs/api.md lists what the API returns and takes."""

    def read(self) -> str:

        return (REPO / "docs" / "api.md").read_text()

    def test_the_device_field_table_is_the_stores_table(self) -> None:
        from cwmpgw.store.interfaces import DEVICE_FIELDS

        text = self.read()
        table = text[text.index("| field | type |") :].split("\n\n")[0]
        documented: dict[str, str] = {}
        for row in table.splitlines()[2:]:
            names, json_type = row.split("|")[1:3]
            for name in re.findall(r"`(\w+)`", names):
                documented[name] = json_type.strip()
        self.assertEqual(documented, {k: v["type"] for k, v in DEVICE_FIELDS.items()})

    def test_the_device_query_table_is_the_routes(self) -> None:
        from cwmpgw.nbi.openapi import ROUTES

        text = self.read()
        section = text[text.index("### `GET /devices`\n") :]
        table = section[section.index("| query | meaning |") :].split("\n\n")[0]
        documented = set(
            re.findall(r"`(\w+)`", "".join(r.split("|")[1] for r in table.splitlines()))
        )
        (route,) = [r for r in ROUTES if r.operation == "list_devices"]
        self.assertEqual(documented, {q.name for q in route.query})

    def test_every_task_type_and_argument_is_in_the_table(self) -> None:
        rows = re.findall(r"^\| `(\w+)` \| 1\.\d \| (.*) \|$", self.read(), re.MULTILINE)
        self.assertEqual(sorted(t for t, _ in rows), sorted(TASK_TYPES))
        for task_type, cell in rows:
            schema = args_schema(task_type)
            required = re.findall(r"\*\*(\w+)\*\*", cell)
            self.assertEqual(required, schema.get("required", []), task_type)
            if task_type != "refresh":  # its cell explains in prose
                named = [] if cell == "—" else [n.strip("* ") for n in cell.split(",")]
                self.assertEqual(named, list(schema["properties"]), task_type)
