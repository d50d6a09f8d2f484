"""The northbound API in memory: the real Site, channel and resource over StringTransport.

The task service, device directory, connection requester and health check are small
in-memory fakes with real behaviour on dicts (written here, against the interfaces);
time is a Clock.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cwmpgw.config import NbiConfig
from cwmpgw.connreq.interfaces import WakeResult
from cwmpgw.fleet.bulk import MemoryBulkService
from cwmpgw.fleet.profiles import MemoryProfileStore
from cwmpgw.fleet.selector import Selector
from cwmpgw.nbi.api import NbiResource, NbiSite, parse_task_request
from cwmpgw.nbi.auth import IAuthorizer, OpenAuthorizer, TokenAuthorizer, make_authorizer
from cwmpgw.nbi.interfaces import IDeviceDirectory
from cwmpgw.nbi.openapi import ROUTES, build_document
from cwmpgw.nbi.tokens import ensure_token_file, main, new_token, token_sha256
from cwmpgw.store.memory import device_view
from cwmpgw.tasks.model import ITaskService, Task, TaskError, UnknownDevice
from tests.support.json_schema import assert_valid
from tests.support.nbikit import FakeHealth, FakeWaker, Pending, Response

TOKEN = "s3cr3t-token-for-tests_0123456789abcdefghijk"
OTHER_TOKEN = "another-token-0123456789"
DEV = "9CA2F4-EC220_G5_V3-22275K2000315"
DEV2 = "00259E-HG8245-48575443A1B2C3D4"
ODD = "00259E-HG%20X-ABC"  # escaped device ids contain "%"
NOW = 1_700_000_000.0


# -- fakes -------------------------------------------------------------------------------------


@implementer(IDeviceDirectory)
class FakeDirectory:
    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.credentials: dict[str, tuple[str, str, tuple[str, str] | None]] = {}
        self.rotations: list[str] = []
        self.fail_with: Exception | None = None

    def rotate_credentials(self, device_id: str) -> Deferred[None]:
        self.rotations.append(device_id)
        return succeed(None)

    def add(self, device_id: str, *, oui: str, product_class: str, last_inform: float) -> None:
        self.devices[device_id] = {
            **device_view(
                {
                    "id": device_id,
                    "oui": oui,
                    "product_class": product_class,
                    "serial_number": device_id.rsplit("-", 1)[-1],
                    "manufacturer": "ACME",
                    "first_seen": repr(last_inform),
                    "last_inform": repr(last_inform),
                    "inform_count": "1",
                    "last_events": '[["1 BOOT", ""]]',
                }
            ),
            "parameters": {
                "Device.DeviceInfo.SoftwareVersion": {"value": "1.0", "type": "xsd:string"}
            },
        }

    def list_devices(
        self, selector: Selector, *, cursor: str, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], str]]:
        if self.fail_with is not None:
            return fail(self.fail_with)
        rows = [
            {k: v for k, v in d.items() if k != "parameters"}
            for _, d in sorted(self.devices.items())
            if selector.matches(d, tags=d["tags"], now=NOW, online_window=600) and d["id"] > cursor
        ]
        page = rows[:limit]
        more = len(rows) > limit
        return succeed((page, page[-1]["id"] if more else ""))

    def change_tags(self, device_id: str, add: Any, remove: Any) -> Deferred[list[str] | None]:
        if device_id not in self.devices:
            return succeed(None)
        tags = (set(self.devices[device_id]["tags"]) - set(remove)) | set(add)
        self.devices[device_id]["tags"] = sorted(tags)
        return succeed(sorted(tags))

    def tag_counts(self) -> Deferred[dict[str, int]]:
        counts: dict[str, int] = {}
        for d in self.devices.values():
            for t in d["tags"]:
                counts[t] = counts.get(t, 0) + 1
        return succeed(counts)

    def get_device(self, device_id: str, parameters: Any = None) -> Deferred[dict[str, Any] | None]:
        if self.fail_with is not None:
            return fail(self.fail_with)
        return succeed(self.devices.get(device_id))

    def delete_device(self, device_id: str) -> Deferred[bool]:
        return succeed(self.devices.pop(device_id, None) is not None)

    def set_credentials(
        self,
        device_id: str,
        username: str,
        password: str,
        connection_request: tuple[str, str] | None = None,
    ) -> Deferred[None]:
        if device_id not in self.devices:
            return fail(UnknownDevice(device_id))
        for other, (user, _, _) in self.credentials.items():
            if user == username and other != device_id:
                return fail(ValueError(f"username {username} belongs to another device"))
        self.credentials[device_id] = (username, password, connection_request)
        return succeed(None)


KNOWN_TYPES = ("GetParameterValues", "Reboot", "refresh")


@implementer(ITaskService)
class FakeTasks:
    def __init__(self, clock: Clock, directory: FakeDirectory) -> None:
        self.clock = clock
        self.directory = directory
        self.tasks: dict[str, Task] = {}
        self.waiters: dict[str, list[Deferred[Task | None]]] = {}
        self.cancelled_waits = 0
        self.fail_with: Exception | None = None
        self.idempotency_keys: list[str | None] = []

    def submit(
        self,
        device_id: str,
        type: str,
        args: dict[str, Any],
        *,
        expires_in: float | None = None,
        idempotency_key: str | None = None,
    ) -> Deferred[Task]:
        self.idempotency_keys.append(idempotency_key)
        if self.fail_with is not None:
            return fail(self.fail_with)
        if type not in KNOWN_TYPES:
            raise TaskError(f"unknown task type {type!r}", path="type")
        if type == "GetParameterValues":
            names = args.get("parameter_names")
            if not isinstance(names, list) or not names:
                return fail(TaskError("required, a non-empty list", path="args.parameter_names"))
            for i, name in enumerate(names):
                if not isinstance(name, str):
                    return fail(TaskError("expected a string", path=f"args.parameter_names[{i}]"))
        if expires_in is not None and expires_in > 31_536_000:
            return fail(TaskError("at most one year", path="expires_in"))
        if device_id not in self.directory.devices:
            return fail(UnknownDevice(device_id))
        now = self.clock.seconds()
        task = Task(
            id=f"task{len(self.tasks) + 1}",
            device_id=device_id,
            type=type,
            args=args,
            created=now,
            expires=now + (expires_in or 604800),
            updated=now,
        )
        self.tasks[task.id] = task
        return succeed(task)

    def get(self, task_id: str) -> Deferred[Task | None]:
        return succeed(self.tasks.get(task_id))

    def list_for_device(self, device_id: str) -> Deferred[list[Task]]:
        return succeed([t for t in self.tasks.values() if t.device_id == device_id])

    def cancel(self, task_id: str) -> Deferred[Task | None]:
        task = self.tasks.get(task_id)
        if task is not None and task.status == "queued":
            task = self._set(task_id, "cancelled")
        return succeed(task)

    def wait(self, task_id: str, timeout: float) -> Deferred[Task | None]:
        task = self.tasks.get(task_id)
        if task is None or task.final:
            return succeed(task)

        def cancel(d: Deferred[Task | None]) -> None:
            self.cancelled_waits += 1
            self.waiters[task_id].remove(d)
            call.cancel()

        d: Deferred[Task | None] = Deferred(cancel)
        self.waiters.setdefault(task_id, []).append(d)

        def timed_out() -> None:
            self.waiters[task_id].remove(d)
            d.callback(self.tasks.get(task_id))

        call = self.clock.callLater(timeout, timed_out)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    def _set(self, task_id: str, status: str, result: dict[str, Any] | None = None) -> Task:
        task = self.tasks[task_id].evolve(
            status=status, result=result, updated=self.clock.seconds()
        )
        self.tasks[task_id] = task
        if task.final:
            for d in self.waiters.pop(task_id, []):
                d.callback(task)
        return task

    def finish(self, task_id: str, result: dict[str, Any]) -> Task:
        """What the session engine does when the CPE answered."""
        return self._set(task_id, "done", result)


# -- HTTP in memory ----------------------------------------------------------------------------


def _files_route(path: str) -> bool:
    return path.startswith(("/files", "/campaigns"))


@dataclass
class Api:
    clock: Clock = field(default_factory=Clock)
    directory: FakeDirectory = field(default_factory=FakeDirectory)
    waker: FakeWaker | None = field(default_factory=FakeWaker)
    health: FakeHealth = field(default_factory=FakeHealth)
    authorizer: IAuthorizer = field(
        default_factory=lambda: TokenAuthorizer([token_sha256(TOKEN), token_sha256(OTHER_TOKEN)])
    )
    max_body_bytes: int = 4096
    max_wait: float = 60
    real_tasks: bool = False  # the in-memory task service instead of FakeTasks

    def __post_init__(self) -> None:
        self.clock.advance(NOW)
        self.tasks: Any = FakeTasks(self.clock, self.directory)
        if self.real_tasks:
            from cwmpgw.bus.memory import MemoryEventBus
            from cwmpgw.tasks.memory import MemoryTaskService

            self.bus = MemoryEventBus()
            self.tasks = MemoryTaskService(
                events=self.bus, clock=self.clock, devices=self.directory.devices
            )
        self.directory.add(DEV, oui="9CA2F4", product_class="EC220_G5_V3", last_inform=NOW - 100)
        self.directory.add(DEV2, oui="00259E", product_class="HG8245", last_inform=NOW - 50)
        self.directory.add(ODD, oui="00259E", product_class="HG%20X", last_inform=NOW - 10)
        self.profiles = MemoryProfileStore()
        self.resource = NbiResource(
            tasks=self.tasks,
            devices=self.directory,
            waker=self.waker,
            health=self.health,
            authorizer=self.authorizer,
            clock=self.clock,
            max_body_bytes=self.max_body_bytes,
            max_wait=self.max_wait,
            bulks=MemoryBulkService(self.clock),
            profiles=self.profiles,
        )
        self.site = NbiSite(self.resource, reactor=self.clock)

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
        if data:
            hdrs["Content-Type"] = "application/json"
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v != ""}
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        protocol.dataReceived(head.encode() + b"\r\n" + data)
        return Pending(transport, protocol)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
        response = self.send(method, path, body, **kwargs).response()
        assert response is not None, "no answer yet"
        return response


def dev_path(device_id: str, suffix: str = "") -> str:
    return "/devices/" + quote(device_id, safe="") + suffix


GPV = {"type": "GetParameterValues", "args": {"parameter_names": ["Device.DeviceInfo."]}}


# -- tokens and authorization -----------------------------------------------------------------


class TokenTests(SynchronousTestCase):
    def test_new_token_is_32_random_bytes_urlsafe(self) -> None:
        a, b = new_token(), new_token()
        self.assertNotEqual(a, b)
        self.assertEqual(len(a), 43)
        self.assertRegex(a, r"^[A-Za-z0-9_-]{43}$")

    def test_ensure_token_file_creates_once_mode_0600(self) -> None:
        data_dir = os.path.join(self.mktemp(), "data")
        digest, created = ensure_token_file(data_dir)
        self.assertTrue(created)
        path = os.path.join(data_dir, "nbi-token")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            token = f.read().strip()
        self.assertEqual(digest, hashlib.sha256(token.encode()).hexdigest())
        self.assertEqual(ensure_token_file(data_dir), (digest, False))
        self.assertEqual(sorted(os.listdir(data_dir)), ["nbi-token"])  # no temporary left

    def test_ensure_token_file_refuses_garbage(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "nbi-token"), "w") as f:
            f.write("not a token\n")
        self.assertRaises(ValueError, ensure_token_file, data_dir)

    def test_cli_new_and_hash(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            self.assertEqual(main(["new"]), 0)
        token, line = out.getvalue().splitlines()
        self.assertEqual(line, f'token_sha256 = ["{token_sha256(token)}"]')
        self.assertNotIn(token, err.getvalue())
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["hash", token]), 0)
        self.assertEqual(out.getvalue().strip(), hashlib.sha256(token.encode()).hexdigest())
        with redirect_stderr(io.StringIO()):
            self.assertEqual(main(["hash", "bad token"]), 2)

    def test_cli_hash_of_a_token_starting_with_a_dash(self) -> None:
        token = "-9B-uz3LiPoGdJWvGB3JbhcRkd05T9YGSncof522-48"  # once made this CLI exit 2
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["hash", "--", token]), 0)
        self.assertEqual(out.getvalue().strip(), hashlib.sha256(token.encode()).hexdigest())

    def test_new_tokens_never_start_with_a_dash(self) -> None:
        # token_urlsafe starts with "-" one time in 64; 2,000 draws miss it with p < 1e-13.
        tokens = [new_token() for _ in range(2000)]
        self.assertFalse([t for t in tokens if t.startswith("-")])
        self.assertEqual({len(t) for t in tokens}, {43})
        self.assertEqual(len(set(tokens)), 2000)

    def test_make_authorizer_uses_the_token_file_and_logs_only_its_path(self) -> None:
        data_dir = self.mktemp()
        with capturedLogs() as events:
            authorizer = make_authorizer(NbiConfig(), data_dir)
        path = os.path.join(data_dir, "nbi-token")
        with open(path) as f:
            token = f.read().strip()
        text = " ".join(formatEvent(e) for e in events)
        self.assertIn(path, text)
        self.assertNotIn(token, text)
        self.assertIsNotNone(authorizer.authorize(f"Bearer {token}".encode()))
        self.assertIsNone(authorizer.authorize(b"Bearer " + new_token().encode()))

    def test_make_authorizer_configured_digests_and_none(self) -> None:
        data_dir = self.mktemp()
        authorizer = make_authorizer(NbiConfig(token_sha256=(token_sha256(TOKEN),)), data_dir)
        self.assertFalse(os.path.exists(data_dir))  # no token file when digests are configured
        self.assertEqual(
            authorizer.authorize(f"Bearer {TOKEN}".encode()), "token:" + token_sha256(TOKEN)[:8]
        )
        self.assertIsInstance(make_authorizer(NbiConfig(auth="none"), data_dir), OpenAuthorizer)

    def test_token_authorizer(self) -> None:
        a = TokenAuthorizer([token_sha256(TOKEN).upper(), token_sha256(OTHER_TOKEN)])
        verifyObject(IAuthorizer, a)
        self.assertIsNotNone(a.authorize(f"Bearer {TOKEN}".encode()))
        self.assertIsNotNone(a.authorize(f"bearer  {OTHER_TOKEN} ".encode()))
        for header in (
            None,
            b"",
            b"Bearer",
            b"Bearer ",
            f"Basic {TOKEN}".encode(),
            f"Bearer {TOKEN}x".encode(),
            f"Bearer {TOKEN} extra".encode(),
            "Bearer tökén".encode(),
            b"Bearer " + b"a" * 5000,
        ):
            self.assertIsNone(a.authorize(header), header)
        self.assertRaises(ValueError, TokenAuthorizer, ["abc"])

    def test_principal_never_contains_the_token(self) -> None:
        a = TokenAuthorizer([token_sha256(TOKEN)])
        who = a.authorize(f"Bearer {TOKEN}".encode())
        assert who is not None
        self.assertNotIn(TOKEN, who)


class AuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()

    def test_no_token(self) -> None:
        r = self.api.call("GET", "/devices", token=None)
        self.assertEqual(r.status, 401)
        self.assertEqual(r.header("www-authenticate"), 'Bearer realm="cwmpgw"')
        self.assertEqual(r.error_code, "unauthorized")

    def test_wrong_token(self) -> None:
        r = self.api.call("GET", "/devices", token="wrong-token")
        self.assertEqual((r.status, r.error_code), (401, "unauthorized"))
        self.assertEqual(r.header("www-authenticate"), 'Bearer realm="cwmpgw"')

    def test_right_tokens(self) -> None:
        self.assertEqual(self.api.call("GET", "/devices").status, 200)
        self.assertEqual(self.api.call("GET", "/devices", token=OTHER_TOKEN).status, 200)

    def test_every_protected_route_needs_the_token(self) -> None:
        for route in ROUTES:
            path = route.path.format(
                device_id=DEV,
                task_id="task1",
                bulk_id="bulk1",
                profile_name="p1",
                file_id="f1",
                campaign_id="c1",
            )
            r = self.api.call(route.method, path, {} if route.body else None, token=None)
            if route.public:
                self.assertEqual(r.status, 200, route)
            else:
                self.assertEqual(r.status, 401, route)
        self.assertEqual(self.api.directory.devices.keys(), {DEV, DEV2, ODD})  # nothing ran

    def test_unknown_routes_without_token_are_401(self) -> None:
        self.assertEqual(self.api.call("GET", "/nope", token=None).status, 401)
        self.assertEqual(self.api.call("GET", "/nope").status, 404)

    def test_public_routes(self) -> None:
        self.assertEqual(self.api.call("GET", "/healthz", token=None).status, 200)
        self.assertEqual(self.api.call("GET", "/openapi.json", token=None).status, 200)
        self.assertEqual(self.api.call("GET", "/healthz", token="wrong").status, 200)

    def test_none_mode(self) -> None:
        api = Api(authorizer=OpenAuthorizer())
        r = api.call("GET", dev_path(DEV), token=None)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["id"], DEV)


# -- routes ---------------------------------------------------------------------------------


class GeneralTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()

    def test_unknown_route(self) -> None:
        for path in (
            "/",
            "/nope",
            "/devices/",
            "/devices/x/y",
            "/tasks",
            "//devices",
            "/devices/x/tasks/y",
        ):
            r = self.api.call("GET", path)
            self.assertEqual((r.status, r.error_code), (404, "not_found"), path)

    def test_wrong_method(self) -> None:
        r = self.api.call("PATCH", "/devices")
        self.assertEqual((r.status, r.error_code), (405, "method_not_allowed"))
        self.assertEqual(r.header("allow"), "GET")
        r = self.api.call("POST", dev_path(DEV))
        self.assertEqual(r.header("allow"), "DELETE, GET")
        r = self.api.call("POST", "/healthz", token=None)
        self.assertEqual((r.status, r.header("allow")), (405, "GET"))

    def test_headers(self) -> None:
        r = self.api.call("GET", "/devices")
        self.assertEqual(r.header("cache-control"), "no-store")
        self.assertEqual(r.header("x-content-type-options"), "nosniff")

    def test_internal_error_is_json_without_traceback(self) -> None:
        self.api.directory.fail_with = RuntimeError("secret internal detail")
        with capturedLogs() as events:
            r = self.api.call("GET", dev_path(DEV))
        self.assertEqual((r.status, r.error_code), (500, "internal_error"))
        self.assertNotIn(b"secret internal detail", r.body)
        self.assertNotIn(b"Traceback", r.body)
        self.assertTrue(any(e.get("log_failure") for e in events))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unserialisable_answer_is_a_clean_500(self) -> None:
        self.api.directory.devices[DEV]["odd"] = {1, 2}
        r = self.api.call("GET", dev_path(DEV))
        self.assertEqual((r.status, r.error_code), (500, "internal_error"))
        self.assertIsNone(r.header("location"))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_storage_down_is_503(self) -> None:
        self.api.directory.fail_with = ConnectionRefusedError("redis")
        r = self.api.call("GET", "/devices")
        self.assertEqual((r.status, r.error_code), (503, "unavailable"))
        self.assertEqual(r.header("retry-after"), "5")

    def test_unknown_query_parameter(self) -> None:
        r = self.api.call("GET", "/devices?colour=red")
        self.assertEqual((r.status, r.error_code), (400, "invalid_request"))
        self.assertIn("colour", r.json()["error"]["message"])
        r = self.api.call("GET", "/devices?oui=a&oui=b")
        self.assertEqual(r.status, 400)
        r = self.api.call("GET", dev_path(DEV, "?x=1"))
        self.assertEqual(r.status, 400)


class HealthTests(SynchronousTestCase):
    def test_ok(self) -> None:
        api = Api()
        r = api.call("GET", "/healthz", token=None)
        self.assertEqual((r.status, r.json()), (200, {"ok": True, "redis": True, "node": "n1"}))

    def test_not_ok(self) -> None:
        api = Api()
        api.health.report = {"ok": False, "redis": False, "node": "n1"}
        r = api.call("GET", "/healthz", token=None)
        self.assertEqual((r.status, r.json()["redis"]), (503, False))

    def test_check_fails(self) -> None:
        api = Api()
        api.health.report = RuntimeError("boom")
        r = api.call("GET", "/healthz", token=None)
        self.assertEqual((r.status, r.json()["ok"]), (503, False))
        self.flushLoggedErrors(RuntimeError)

    def test_check_hangs(self) -> None:
        api = Api()
        api.health.check = lambda: Deferred()  # type: ignore[method-assign]
        pending = api.send("GET", "/healthz", token=None)
        self.assertIsNone(pending.response())
        api.clock.advance(5)
        r = pending.response()
        assert r is not None
        self.assertEqual(r.status, 503)
        self.assertTrue(self.flushLoggedErrors())


class DeviceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()

    def test_list(self) -> None:
        body = self.api.call("GET", "/devices").json()
        self.assertEqual([d["id"] for d in body["devices"]], [ODD, DEV2, DEV])  # by id
        self.assertEqual(body["next_cursor"], "")
        self.assertNotIn("parameters", body["devices"][0])

    def test_list_pages(self) -> None:
        first = self.api.call("GET", "/devices?limit=2").json()
        self.assertEqual(len(first["devices"]), 2)
        self.assertNotEqual(first["next_cursor"], "")
        second = self.api.call("GET", f"/devices?limit=2&cursor={first['next_cursor']}").json()
        self.assertEqual([d["id"] for d in second["devices"]], [DEV])
        self.assertEqual(second["next_cursor"], "")

    def test_filters(self) -> None:
        def ids(query: str) -> list[str]:
            r = self.api.call("GET", "/devices?" + query)
            self.assertEqual(r.status, 200, r.body)
            return [d["id"] for d in r.json()["devices"]]

        self.assertEqual(ids("oui=00259E"), [ODD, DEV2])
        self.assertEqual(ids("oui=00259E&product_class=HG8245"), [DEV2])
        self.assertEqual(ids("id_prefix=9CA2"), [DEV])
        self.assertEqual(ids(f"informed_after={int(NOW - 50)}"), [ODD, DEV2])
        self.assertEqual(ids("informed_after=2023-11-14T22:12:30Z"), [ODD, DEV2])  # NOW - 50
        self.assertEqual(ids("informed_after=2023-11-14T23:12:30.000%2B01:00"), [ODD, DEV2])
        self.assertEqual(ids(f"informed_before={NOW - 50}"), [DEV])
        self.assertEqual(ids("informed_before=2023-11-14T22:12:30Z"), [DEV])

    def test_bad_list_queries(self) -> None:
        for query in (
            "limit=0",
            "limit=1001",
            "limit=abc",
            "limit=-1",
            "informed_after=yesterday",
            "informed_after=2023-11-14T22:12:30",  # no offset
            "informed_before=2023-13-14T22:12:30Z",
            "oui=" + "x" * 257,
            "oui=%01",
        ):
            r = self.api.call("GET", "/devices?" + query)
            self.assertEqual((r.status, r.error_code), (400, "invalid_request"), query)

    def test_get(self) -> None:
        r = self.api.call("GET", dev_path(DEV))
        self.assertEqual(r.status, 200)
        body = r.json()
        self.assertEqual(body["id"], DEV)
        self.assertEqual(body["parameters"]["Device.DeviceInfo.SoftwareVersion"]["value"], "1.0")

    def test_get_id_with_percent(self) -> None:
        r = self.api.call("GET", dev_path(ODD))
        self.assertEqual((r.status, r.json()["id"]), (200, ODD))

    def test_get_unknown(self) -> None:
        r = self.api.call("GET", dev_path("nope"))
        self.assertEqual((r.status, r.error_code), (404, "device_not_found"))
        r = self.api.call("GET", "/devices/%00x")
        self.assertEqual(r.status, 404)

    def test_delete(self) -> None:
        r = self.api.call("DELETE", dev_path(DEV))
        self.assertEqual((r.status, r.body), (204, b""))
        self.assertNotIn(DEV, self.api.directory.devices)
        r = self.api.call("DELETE", dev_path(DEV))
        self.assertEqual((r.status, r.error_code), (404, "device_not_found"))


CREDS = {
    "username": "user-1",
    "password": "pa55word",
    "connection_request": {"username": "cr", "password": "cr-secret"},
}


class CredentialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()

    def test_set(self) -> None:
        r = self.api.call("PUT", dev_path(DEV, "/credentials"), CREDS)
        self.assertEqual((r.status, r.body), (204, b""))
        self.assertEqual(
            self.api.directory.credentials[DEV], ("user-1", "pa55word", ("cr", "cr-secret"))
        )

    def test_rotate(self) -> None:
        r = self.api.call("POST", dev_path(DEV, "/credentials/rotate"))
        self.assertEqual(r.status, 202)
        self.assertEqual(self.api.directory.rotations, [DEV])
        self.assertNotIn(b"password", r.body)
        missing = self.api.call("POST", dev_path("nope", "/credentials/rotate"))
        self.assertEqual(missing.status, 404)
        self.assertEqual(self.api.directory.rotations, [DEV])

    def test_set_without_connection_request(self) -> None:
        body = {"username": "u", "password": "p", "connection_request": None}
        self.assertEqual(self.api.call("PUT", dev_path(DEV2, "/credentials"), body).status, 204)
        self.assertEqual(self.api.directory.credentials[DEV2], ("u", "p", None))

    def test_passwords_never_echoed_or_logged(self) -> None:
        bad = dict(CREDS, username="x" * 257)
        with capturedLogs() as events:
            r1 = self.api.call("PUT", dev_path(DEV, "/credentials"), bad)
            r2 = self.api.call("PUT", dev_path(DEV, "/credentials"), CREDS)
        self.assertEqual((r1.status, r2.status), (400, 204))
        text = " ".join(formatEvent(e) for e in events) + repr(events)
        for secret in ("pa55word", "cr-secret"):
            self.assertNotIn(secret.encode(), r1.body)
            self.assertNotIn(secret, text)

    def test_validation(self) -> None:
        cases = [
            {"username": "u"},
            {"password": "p"},
            {"username": "", "password": "p"},
            {"username": "u", "password": ""},
            {"username": "u", "password": "p" * 257},
            {"username": "u\x07", "password": "p"},
            {"username": "u", "password": "p\n"},
            {"username": 5, "password": "p"},
            {"username": "u", "password": "p", "extra": 1},
            {"username": "u", "password": "p", "connection_request": "x"},
            {"username": "u", "password": "p", "connection_request": {"username": "c"}},
            {
                "username": "u",
                "password": "p",
                "connection_request": {"username": "c", "password": "\x00"},
            },
            ["u", "p"],
        ]
        for body in cases:
            r = self.api.call("PUT", dev_path(DEV, "/credentials"), body)
            self.assertEqual((r.status, r.error_code), (400, "invalid_request"), body)
        self.assertEqual(self.api.directory.credentials, {})
        r = self.api.call(
            "PUT", dev_path(DEV, "/credentials"), {"username": "u" * 256, "password": "p" * 256}
        )
        self.assertEqual(r.status, 204)

    def test_unknown_device(self) -> None:
        r = self.api.call("PUT", dev_path("nope", "/credentials"), CREDS)
        self.assertEqual((r.status, r.error_code), (404, "device_not_found"))

    def test_username_of_another_device(self) -> None:
        self.api.call("PUT", dev_path(DEV, "/credentials"), CREDS)
        r = self.api.call("PUT", dev_path(DEV2, "/credentials"), CREDS)
        self.assertEqual((r.status, r.error_code), (409, "conflict"))

    def test_body_problems(self) -> None:
        path = dev_path(DEV, "/credentials")
        r = self.api.call(
            "PUT", path, raw=b'{"username": ', headers={"Content-Type": "application/json"}
        )
        self.assertEqual((r.status, r.error_code), (400, "invalid_json"))
        r = self.api.call("PUT", path, raw=b"{}", headers={"Content-Type": "text/plain"})
        self.assertEqual((r.status, r.error_code), (415, "unsupported_media_type"))
        r = self.api.call("PUT", path, raw=b"{}", headers={"Content-Type": ""})
        self.assertEqual(r.status, 415)
        r = self.api.call(
            "PUT", path, raw=b"{}", headers={"Content-Type": "application/json; charset=latin-1"}
        )
        self.assertEqual(r.status, 415)
        r = self.api.call("PUT", path)
        self.assertEqual((r.status, r.error_code), (400, "invalid_json"))
        for raw in (
            b'{"a": 1, "a": 2}',
            b'{"a": NaN}',
            b"\xff\xfe",
            b"[" * 100_000,
            b'{"a": ["\\ud800"]}',  # a lone surrogate: JSON, not Unicode
            b'{"a": "\\udc00\\ud83d"}',
        ):
            r = self.api.call(
                "PUT", path, raw=raw[:4096], headers={"Content-Type": "application/json"}
            )
            self.assertEqual((r.status, r.error_code), (400, "invalid_json"), raw[:20])

    def test_oversized_body_with_content_length(self) -> None:
        body = dict(CREDS, username="u" * 5000)
        r = self.api.call("PUT", dev_path(DEV, "/credentials"), body)
        self.assertEqual((r.status, r.error_code), (413, "payload_too_large"))
        self.assertEqual(self.api.directory.credentials, {})

    def test_oversized_chunked_body_is_not_buffered(self) -> None:
        chunk = b"x" * 3000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
        pending = self.api.send(
            "PUT",
            dev_path(DEV, "/credentials"),
            raw=chunked,
            headers={
                "Transfer-Encoding": "chunked",
                "Content-Length": "",
                "Content-Type": "application/json",
            },
        )
        r = pending.response()
        assert r is not None
        self.assertEqual((r.status, r.error_code), (413, "payload_too_large"))


class TaskTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()

    def test_create(self) -> None:
        r = self.api.call("POST", dev_path(DEV, "/tasks"), dict(GPV, expires_in=60))
        self.assertEqual(r.status, 201)
        body = r.json()
        self.assertEqual(r.header("location"), f"/tasks/{body['id']}")
        self.assertEqual(
            (body["status"], body["device_id"], body["type"]), ("queued", DEV, "GetParameterValues")
        )
        self.assertEqual(body["expires"], NOW + 60)
        self.assertNotIn("connection_request", body)
        self.assertEqual(self.api.waker.calls if self.api.waker else None, [])
        self.assertIn(body["id"], self.api.tasks.tasks)

    def test_create_args_default_to_empty(self) -> None:
        r = self.api.call("POST", dev_path(DEV, "/tasks"), {"type": "Reboot"})
        self.assertEqual((r.status, r.json()["args"]), (201, {}))

    def test_task_error_names_the_path(self) -> None:
        body = {"type": "GetParameterValues", "args": {"parameter_names": ["ok", 5]}}
        r = self.api.call("POST", dev_path(DEV, "/tasks"), body)
        self.assertEqual((r.status, r.error_code), (400, "invalid_task"))
        self.assertEqual(r.json()["error"]["message"], "args.parameter_names[1]: expected a string")
        r = self.api.call("POST", dev_path(DEV, "/tasks"), {"type": "Explode"})
        self.assertEqual(r.json()["error"]["message"], "type: unknown task type 'Explode'")
        self.assertEqual(self.api.tasks.tasks, {})

    def test_bad_bodies(self) -> None:
        for body in (
            {},
            {"type": ""},
            {"type": 5},
            {"type": "Reboot", "args": []},
            {"type": "Reboot", "expires_in": "soon"},
            {"type": "Reboot", "expires_in": 0},
            {"type": "Reboot", "expires_in": True},
            {"type": "Reboot", "device_id": DEV},
            {"type": "Reboot", "colour": "red"},
            "Reboot",
        ):
            r = self.api.call("POST", dev_path(DEV, "/tasks"), body)
            self.assertEqual((r.status, r.error_code), (400, "invalid_request"), body)
        self.assertEqual(self.api.tasks.tasks, {})

    def test_unknown_device(self) -> None:
        r = self.api.call("POST", dev_path("nope", "/tasks"), GPV)
        self.assertEqual((r.status, r.error_code), (404, "device_not_found"))

    def test_list(self) -> None:
        self.api.call("POST", dev_path(DEV, "/tasks"), GPV)
        self.api.call("POST", dev_path(DEV, "/tasks"), {"type": "Reboot"})
        self.api.call("POST", dev_path(DEV2, "/tasks"), {"type": "Reboot"})
        body = self.api.call("GET", dev_path(DEV, "/tasks")).json()
        self.assertEqual([t["type"] for t in body["tasks"]], ["GetParameterValues", "Reboot"])
        self.assertEqual(self.api.call("GET", dev_path(ODD, "/tasks")).json(), {"tasks": []})
        r = self.api.call("GET", dev_path("nope", "/tasks"))
        self.assertEqual((r.status, r.error_code), (404, "device_not_found"))

    def test_get(self) -> None:
        created = self.api.call("POST", dev_path(DEV, "/tasks"), GPV).json()
        r = self.api.call("GET", f"/tasks/{created['id']}")
        self.assertEqual((r.status, r.json()), (200, created))
        r = self.api.call("GET", "/tasks/nope")
        self.assertEqual((r.status, r.error_code), (404, "task_not_found"))
        r = self.api.call("GET", "/tasks/bad%20id")
        self.assertEqual(r.status, 404)

    def test_cancel(self) -> None:
        created = self.api.call("POST", dev_path(DEV, "/tasks"), GPV).json()
        r = self.api.call("DELETE", f"/tasks/{created['id']}")
        self.assertEqual((r.status, r.json()["status"]), (200, "cancelled"))
        self.assertEqual(self.api.tasks.tasks[created["id"]].status, "cancelled")
        self.assertEqual(self.api.call("DELETE", f"/tasks/{created['id']}").status, 200)

    def test_cancel_running_or_final_is_409(self) -> None:
        created = self.api.call("POST", dev_path(DEV, "/tasks"), GPV).json()
        self.api.tasks._set(created["id"], "running")
        r = self.api.call("DELETE", f"/tasks/{created['id']}")
        self.assertEqual((r.status, r.error_code), (409, "task_not_cancellable"))
        self.api.tasks.finish(created["id"], {})
        self.assertEqual(self.api.call("DELETE", f"/tasks/{created['id']}").status, 409)
        self.assertEqual(self.api.tasks.tasks[created["id"]].status, "done")

    def test_cancel_unknown(self) -> None:
        r = self.api.call("DELETE", "/tasks/nope")
        self.assertEqual((r.status, r.error_code), (404, "task_not_found"))

    def test_storage_down_on_submit_is_503(self) -> None:
        self.api.tasks.fail_with = TimeoutError("redis")
        r = self.api.call("POST", dev_path(DEV, "/tasks"), GPV)
        self.assertEqual(r.status, 503)


class IdempotencyTests(SynchronousTestCase):
    """A back office that retries a POST whose answer it lost queues the task once."""

    def setUp(self) -> None:
        self.api = Api(real_tasks=True)
        self.path = dev_path(DEV, "/tasks")

    def post(self, body: Any, key: str | None = None) -> Response:
        headers = {"Idempotency-Key": key} if key is not None else None
        return self.api.call("POST", self.path, body, headers=headers)

    def queued(self) -> list[str]:
        return [e.data["id"] for e in self.api.bus.events if e.type == "task.queued"]

    def test_a_retry_with_the_same_key_answers_with_the_first_task(self) -> None:
        first = self.post({"type": "Reboot"}, "bo-7f3a")
        self.assertEqual((first.status, first.header("idempotent-replayed")), (201, None))
        again = self.post({"type": "Reboot"}, "bo-7f3a")
        self.assertEqual((again.status, again.header("idempotent-replayed")), (200, "true"))
        self.assertEqual(again.json(), first.json())
        self.assertEqual(again.header("location"), first.header("location"))
        self.assertEqual(self.queued(), [first.json()["id"]])
        # The key in the body is the same key.
        body = self.post({"type": "Reboot", "idempotency_key": "bo-7f3a"})
        self.assertEqual((body.status, body.json()["id"]), (200, first.json()["id"]))
        self.assertEqual(len(self.queued()), 1)

    def test_the_key_used_for_another_request_is_422(self) -> None:
        self.assertEqual(self.post({"type": "Reboot"}, "k1").status, 201)
        r = self.post({"type": "FactoryReset"}, "k1")
        self.assertEqual((r.status, r.error_code), (422, "idempotency_conflict"))
        self.assertEqual(
            r.json()["error"]["message"], "idempotency_key: already used for another request"
        )
        other = self.api.call(
            "POST", dev_path(DEV2, "/tasks"), {"type": "Reboot"}, headers={"Idempotency-Key": "k1"}
        )
        self.assertEqual((other.status, other.error_code), (422, "idempotency_conflict"))
        self.assertEqual(len(self.queued()), 1)

    def test_unusable_keys_are_400(self) -> None:
        for key in ("has space", "x" * 129):
            r = self.post({"type": "Reboot"}, key)
            self.assertEqual((r.status, r.error_code), (400, "invalid_task"), key)
            self.assertTrue(r.json()["error"]["message"].startswith("idempotency_key: "))
        r = self.post({"type": "Reboot", "idempotency_key": "a"}, "b")
        self.assertEqual((r.status, r.error_code), (400, "invalid_request"))
        r = self.post({"type": "Reboot", "idempotency_key": 5})
        self.assertEqual((r.status, r.error_code), (400, "invalid_request"))
        self.assertEqual(self.queued(), [])


class WaitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()

    def test_task_finishes_in_time(self) -> None:
        pending = self.api.send("POST", dev_path(DEV, "/tasks?wait=30"), GPV)
        self.assertIsNone(pending.response())  # still waiting
        self.api.clock.advance(10)
        self.assertIsNone(pending.response())
        (task_id,) = self.api.tasks.tasks
        self.api.tasks.finish(task_id, {"parameters": []})
        r = pending.response()
        assert r is not None
        self.assertEqual(r.status, 200)
        self.assertEqual((r.json()["status"], r.json()["result"]), ("done", {"parameters": []}))
        self.assertEqual(r.header("location"), f"/tasks/{task_id}")
        self.assertEqual(self.api.tasks.waiters.get(task_id), None)

    def test_task_not_finished_in_time(self) -> None:
        pending = self.api.send("POST", dev_path(DEV, "/tasks?wait=2.5"), GPV)
        self.api.clock.advance(2)
        self.assertIsNone(pending.response())
        self.api.clock.advance(0.5)
        r = pending.response()
        assert r is not None
        self.assertEqual((r.status, r.json()["status"]), (202, "queued"))

    def test_wait_zero(self) -> None:
        pending = self.api.send("POST", dev_path(DEV, "/tasks?wait=0"), GPV)
        self.api.clock.advance(0)
        r = pending.response()
        assert r is not None
        self.assertEqual((r.status, r.json()["status"]), (202, "queued"))

    def test_wait_limits(self) -> None:
        for query in ("wait=61", "wait=-1", "wait=abc", "wait=1e3", "wait="):
            r = self.api.call("POST", dev_path(DEV, "/tasks?" + query), GPV)
            self.assertEqual((r.status, r.error_code), (400, "invalid_request"), query)
        self.assertEqual(self.api.tasks.tasks, {})

    def test_client_going_away_cancels_the_wait(self) -> None:
        pending = self.api.send("POST", dev_path(DEV, "/tasks?wait=30"), GPV)
        self.assertEqual(self.api.tasks.cancelled_waits, 0)
        pending.disconnect()
        self.assertEqual(self.api.tasks.cancelled_waits, 1)
        self.assertEqual(self.api.tasks.waiters, {next(iter(self.api.tasks.tasks)): []})
        self.assertEqual(len(self.api.tasks.tasks), 1)  # the task stays


class ConnectionRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()
        assert self.api.waker is not None
        self.waker = self.api.waker

    def test_wake_after_storing(self) -> None:
        r = self.api.call("POST", dev_path(DEV, "/tasks?connection_request=true"), GPV)
        self.assertEqual(r.status, 201)
        self.assertEqual(self.waker.calls, [DEV])
        self.assertEqual(
            r.json()["connection_request"],
            {"outcome": "ok", "session_started": True, "method": "http", "detail": ""},
        )

    def test_wake_not_called_for_a_refused_task(self) -> None:
        r = self.api.call("POST", dev_path(DEV, "/tasks?connection_request=true"), {"type": "X"})
        self.assertEqual(r.status, 400)
        self.assertEqual(self.waker.calls, [])

    def test_wake_failure_does_not_fail_the_task(self) -> None:
        self.waker.result = RuntimeError("network exploded")
        r = self.api.call("POST", dev_path(DEV, "/tasks?connection_request=1"), GPV)
        self.assertEqual(r.status, 201)
        self.assertEqual(r.json()["connection_request"]["outcome"], "error")
        self.assertNotIn("exploded", r.body.decode())
        self.assertEqual(len(self.api.tasks.tasks), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_wake_reports_unreachable(self) -> None:
        self.waker.result = WakeResult("unreachable", detail="no route to host")
        body = self.api.call("POST", dev_path(DEV, "/tasks?connection_request=true"), GPV).json()
        self.assertEqual(body["connection_request"]["outcome"], "unreachable")

    def test_no_waker(self) -> None:
        api = Api(waker=None)
        r = api.call("POST", dev_path(DEV, "/tasks?connection_request=true"), GPV)
        self.assertEqual((r.status, r.json()["connection_request"]["outcome"]), (201, "refused"))

    def test_bad_flag(self) -> None:
        r = self.api.call("POST", dev_path(DEV, "/tasks?connection_request=maybe"), GPV)
        self.assertEqual(r.status, 400)
        self.assertEqual(self.waker.calls, [])

    def test_wake_and_wait_together(self) -> None:
        woke: Deferred[WakeResult] = Deferred()
        self.waker.result = woke
        pending = self.api.send(
            "POST", dev_path(DEV, "/tasks?connection_request=true&wait=30"), GPV
        )
        self.assertEqual(self.waker.calls, [DEV])
        (task_id,) = self.api.tasks.tasks
        self.api.tasks.finish(task_id, {"ok": 1})  # the session ran the task...
        self.assertIsNone(pending.response())  # ...but the wake has not reported yet
        woke.callback(WakeResult("ok", session_started=True, method="udp"))
        r = pending.response()
        assert r is not None
        self.assertEqual(r.status, 200)
        self.assertEqual(
            (r.json()["status"], r.json()["connection_request"]["method"]), ("done", "udp")
        )

    def test_client_going_away_cancels_the_wake(self) -> None:
        cancelled: list[bool] = []
        self.waker.result = Deferred(lambda d: cancelled.append(True))
        pending = self.api.send("POST", dev_path(DEV, "/tasks?connection_request=true"), GPV)
        pending.disconnect()
        self.assertEqual(cancelled, [True])


class ParseTaskRequestTests(SynchronousTestCase):
    def test_command_form_needs_device_id(self) -> None:
        req = parse_task_request({"device_id": DEV, "type": "Reboot", "expires_in": 5})
        self.assertEqual(
            (req.device_id, req.type, req.args, req.expires_in), (DEV, "Reboot", {}, 5.0)
        )
        from cwmpgw.nbi.api import ApiError

        with self.assertRaises(ApiError) as e:
            parse_task_request({"type": "Reboot"})
        self.assertEqual(e.exception.message, "device_id: required")


# -- the OpenAPI document against the server ----------------------------------------------------


METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/components/schemas/"), ref
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> None:
    assert_valid(doc, schema, value, where)


def example(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    schema = resolve(doc, schema)
    if "examples" in schema:
        return schema["examples"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "integer" or kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "object":
        return {k: example(doc, schema["properties"][k]) for k in schema.get("required", ())}
    return "x"


class OpenApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Api()
        self.doc = self.api.call("GET", "/openapi.json", token=None).json()

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The device and task routes (files and campaigns: tests/test_nbi_conformance.py,
        with a file store behind them)."""
        return [
            (path, method.upper(), op)
            for path, item in self.doc["paths"].items()
            if not _files_route(path)
            for method, op in item.items()
        ]

    def fill(self, path: str, task_id: str) -> str:
        path = path.replace("{bulk_id}", self.bulk_id).replace("{profile_name}", "p1")
        return path.replace("{device_id}", quote(DEV, safe="")).replace("{task_id}", task_id)

    def new_task(self) -> str:
        """A fresh gateway (earlier requests may have deleted the device) with one task."""
        self.api = Api()
        task_id: str = self.api.call("POST", dev_path(DEV, "/tasks"), GPV).json()["id"]
        bulk = {"selector": {}, "task": {"type": "Reboot"}}
        self.bulk_id: str = self.api.call("POST", "/bulk", bulk).json()["id"]
        profile = {"parameters": [{"name": "ManagementServer.PeriodicInformInterval", "value": 60}]}
        self.api.call("PUT", "/profiles/p1", profile)
        return task_id

    def documented(self, op: dict[str, Any], r: Response) -> dict[str, Any]:
        status = str(r.status)
        self.assertIn(status, op["responses"], (op["operationId"], r.status, r.body[:200]))
        response: dict[str, Any] = op["responses"][status]
        content = response.get("content")
        if content is None:
            self.assertEqual(r.body, b"", op["operationId"])
        else:
            validate(self.doc, content["application/json"]["schema"], r.json(), op["operationId"])
        for header, spec in response.get("headers", {}).items():
            if spec["required"]:
                self.assertIsNotNone(r.header(header), (op["operationId"], status, header))
        return response

    def test_served_document_is_the_built_one(self) -> None:
        self.assertEqual(self.doc, build_document(max_wait=60))
        self.assertEqual(self.doc["openapi"], "3.1.0")
        bearer = self.doc["components"]["securitySchemes"]["bearer"]
        self.assertEqual((bearer["type"], bearer["scheme"]), ("http", "bearer"))
        self.assertEqual(self.doc["security"], [{"bearer": []}])

    def test_document_is_well_formed(self) -> None:
        ids = [op["operationId"] for _, _, op in self.operations()]
        self.assertEqual(len(ids), len(set(ids)))
        refs = re.findall(r'"\$ref": "#/components/schemas/([A-Za-z]+)"', json.dumps(self.doc))
        self.assertTrue(refs)
        for name in refs:
            self.assertIn(name, self.doc["components"]["schemas"])
        for path, _, op in self.operations():
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            self.assertEqual(declared, set(re.findall(r"\{(\w+)\}", path)), path)
            for status, response in op["responses"].items():
                self.assertRegex(status, r"^[1-5]\d\d$")
                self.assertTrue(response["description"])
            if op.get("security") == []:
                self.assertNotIn("401", op["responses"])
            else:
                self.assertIn("401", op["responses"])

    def test_every_path_and_method_matches_the_server(self) -> None:
        """Documented methods are answered (never 404/405); others are 405 with Allow."""
        for path, item in self.doc["paths"].items():
            if _files_route(path):
                continue
            documented = {m.upper() for m in item}
            for method in METHODS:
                task_id = self.new_task()
                op = item.get(method.lower())
                body = (
                    example(self.doc, op["requestBody"]["content"]["application/json"]["schema"])
                    if op and "requestBody" in op
                    else None
                )
                r = self.api.call(method, self.fill(path, task_id), body)
                if method in documented:
                    self.assertNotIn(r.status, (404, 405), (method, path, r.body))
                    assert op is not None
                    self.documented(op, r)
                else:
                    self.assertEqual(r.status, 405, (method, path))
                    self.assertEqual(set(r.header("allow").split(", ")), documented)  # type: ignore[union-attr]
        # And nothing else is answered.
        for path in (
            "/device",
            "/devices/x/task",
            "/tasks",
            "/openapi",
            "/health",
            "/devices/x/credentials/y",
        ):
            self.assertEqual(self.api.call("GET", path).status, 404, path)

    def test_example_requests_get_documented_statuses(self) -> None:
        for path, method, op in self.operations():
            task_id = self.new_task()
            query = urlencode(
                [
                    (p["name"], json.dumps(value) if isinstance(value, bool) else str(value))
                    for p in op.get("parameters", ())
                    if p["in"] == "query" and p["name"] != "cursor"  # cursors come from a page
                    for value in [example(self.doc, p["schema"])]
                ]
            )
            url = self.fill(path, task_id) + ("?" + query if query else "")
            body = None
            if "requestBody" in op:
                body = example(self.doc, op["requestBody"]["content"]["application/json"]["schema"])
                validate(self.doc, op["requestBody"]["content"]["application/json"]["schema"], body)
            pending = self.api.send(method, url, body)
            self.api.clock.advance(self.api.max_wait)  # any wait ends
            r = pending.response()
            assert r is not None
            self.assertLess(r.status, 300, (method, url, r.body))
            self.documented(op, r)

    def test_error_statuses_are_documented(self) -> None:
        for path, method, op in self.operations():
            task_id = self.new_task()
            url = self.fill(path, task_id)
            tries: list[Response] = []
            if op.get("security") != []:
                tries.append(self.api.call(method, url, token=None))
            if "{" in path:
                body = None
                if "requestBody" in op:
                    schema = op["requestBody"]["content"]["application/json"]["schema"]
                    body = example(self.doc, schema)
                unknown = url.replace(quote(DEV, safe=""), "nope").replace(task_id, "nope")
                unknown = unknown.replace(self.bulk_id, "nope").replace("/p1", "/nope")
                r = self.api.call(method, unknown, body)
                # PUT of an unknown profile creates it.
                expected = 201 if op["operationId"] == "put_profile" else 404
                self.assertEqual(r.status, expected, (method, unknown, r.body))
                if expected == 404:
                    tries.append(r)
            if "requestBody" in op:
                tries.append(self.api.call(method, url, {"unexpected": True}))
                tries.append(
                    self.api.call(
                        method, url, raw=b"{", headers={"Content-Type": "application/json"}
                    )
                )
                tries.append(
                    self.api.call(method, url, raw=b"{}", headers={"Content-Type": "text/plain"})
                )
                tries.append(
                    self.api.call(
                        method, url, raw=b" " * 5000, headers={"Content-Type": "application/json"}
                    )
                )
            if any(p["in"] == "query" for p in op.get("parameters", ())):
                tries.append(
                    self.api.call(method, url + "?bogus=1", {} if "requestBody" in op else None)
                )
            for r in tries:
                self.assertGreaterEqual(r.status, 400, (method, url))
                response = self.documented(op, r)
                if r.status >= 400:
                    self.assertEqual(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                    )
            self.assertTrue(tries or op.get("security") == [], path)

    def test_routes_table_and_document_agree(self) -> None:
        from_routes = {(r.method, r.path) for r in ROUTES}
        from_doc = {(m.upper(), p) for p, item in self.doc["paths"].items() for m in item}
        self.assertEqual(from_routes, from_doc)
