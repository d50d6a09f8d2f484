"""Full data models over real TLS (issue 13): a real gateway, a real Redis, the simulator
as the CPE with a generated TR-181 tree of thousands of parameters."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from cwmpgw.sim import Fleet, credential_templates
from cwmpgw.sim.device import SimDevice
from cwmpgw.sim.tr181 import large_tr181
from tests.support.gateway import acs_url, cafile, start_gateway
from tests.support.loadkit import give_credentials
from tests.support.redis_server import unique_prefix

KiB = 1024


@pytest.mark.usefixtures("redis_for_class")
class BigModelTests(TestCase):
    redis_server: Any
    timeout = 300

    async def start(self, parameters: int, **acs: Any) -> tuple[GatewayService, Fleet, SimDevice]:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-big-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        service = await start_gateway(self, self.dir, self.redis_server.url, self.prefix, acs=acs)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        self.answers: list[int] = []  # sizes of the CPE's POSTs
        fleet = Fleet(
            reactor,
            acs_url(service),
            devices=1,
            template=large_tr181(parameters),
            credentials=credential_templates("{device_id}", "pw-{serial}-big"),
            cafile=cafile(self.dir),
            bootstrap=False,
            request_timeout=120,
            trace=lambda direction, device, body: (
                self.answers.append(len(body)) if direction == "cpe" else None
            ),
        )
        await give_credentials(service, fleet)
        await fleet.start()
        self.addCleanup(fleet.stop)
        device = fleet.devices[0]
        first = await fleet.inform(device, "1 BOOT")  # the device is known: tasks may queue
        self.assertTrue(first.ok, first.reason)
        return service, fleet, device

    def cached(self, device_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(self.prefix + "device:" + device_id + ":params")
        return {k: json.loads(v) for k, v in raw.items()}

    async def test_refresh_of_a_10000_parameter_model(self) -> None:
        service, fleet, device = await self.start(10_000)
        task = await service.tasks.submit(device.device_id, "refresh", {"path": "Device."})
        result = await fleet.inform(device, "6 CONNECTION REQUEST")
        self.assertTrue(result.ok, result.reason)
        self.assertGreater(max(self.answers), 1_000_000)  # the names: over 1 MB in one POST
        done = await service.tasks.get(task.id)
        self.assertEqual(done.status, "done", done.fault)
        self.assertEqual(done.attempts, 1)
        template = fleet.template
        self.assertGreaterEqual(len(template.params), 10_000)
        self.assertEqual(len(done.result["parameters"]), len(template.params))
        cache = self.cached(device.device_id)
        missing = [n for n in template.params if n not in cache]
        self.assertEqual(missing, [])
        for name in ("Device.Hosts.Host.200.PhysAddress", "Device.NAT.PortMapping.20.ExternalPort"):
            param = device.model.read(name)
            assert param is not None
            self.assertEqual(cache[name][0], param.value)

    async def test_body_cap_before_and_inside_a_session(self) -> None:
        service, fleet, device = await self.start(2_000)
        size = 300 * KiB
        # Before authentication: 413 as soon as the head says 300 KiB.
        status = await deferToThread(self.announce, service, size)
        self.assertEqual(status, 413)
        # Inside an authenticated session, an answer of that size is taken.
        self.answers.clear()
        task = await service.tasks.submit(
            device.device_id,
            "GetParameterNames",
            {"parameter_path": "Device.", "next_level": False},
        )
        result = await fleet.inform(device, "6 CONNECTION REQUEST")
        self.assertTrue(result.ok, result.reason)
        self.assertGreaterEqual(max(self.answers), size)
        done = await service.tasks.get(task.id)
        self.assertEqual(done.status, "done", done.fault)

    def announce(self, service: GatewayService, size: int) -> int:
        """Send a POST head announcing ``size`` bytes; the status answered before the body."""
        assert service.acs_port is not None
        port = service.acs_port.getHost().port  # type: ignore[attr-defined]
        context = ssl.create_default_context(cafile=cafile(self.dir))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(
                    b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                    b"Content-Length: %d\r\n\r\n" % size
                )
                sock.sendall(b"<" * (64 * KiB))
                answer = sock.recv(4096)
        return int(answer.split(b" ", 2)[1])

    async def test_answer_over_the_session_cap_fails_the_task_with_the_size(self) -> None:
        cap = 1024 * KiB
        service, fleet, device = await self.start(10_000, max_session_body_bytes=cap)
        task = await service.tasks.submit(device.device_id, "refresh", {"path": "Device."})
        result = await fleet.inform(device, "6 CONNECTION REQUEST")
        self.assertFalse(result.ok)
        failed = await service.tasks.get(task.id)
        self.assertEqual(failed.status, "failed")
        self.assertEqual(failed.attempts, 1)  # not retried: the answer would be as large
        reason = failed.fault["reason"]
        self.assertTrue(reason.startswith("answer too large: "), reason)
        self.assertIn(f"> limit {cap} bytes", reason)
        # The next session goes on normally, with nothing left to do.
        again = await fleet.inform(device, "2 PERIODIC")
        self.assertTrue(again.ok, again.reason)
        self.assertEqual(again.rpcs, ())
        self.assertTrue(os.path.isdir(self.dir))
