"""Diagnostic tasks end to end: the real gateway over TLS with a real Redis, the simulator
performing each diagnostic (TCP echoes on loopback, HTTP transfers with the gateway's own
TR-143 throughput endpoint) and reporting it with 8 DIAGNOSTICS COMPLETE in a later
session; and the endpoint refusing URLs it did not sign, or signed too long ago."""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from cwmpgw.sim.device import credential_templates
from cwmpgw.sim.fleet import Fleet, Rate
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.loadkit import free_port
from tests.support.redis_server import unique_prefix

DOWNLOAD_BYTES = 2_000_000


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.usefixtures("redis_for_class")
class DiagnosticsTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        self.dir = tempfile.mkdtemp(prefix="cwmpgw-diag-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        port = free_port()
        self.service: GatewayService = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            diagnostics={
                "throughput_enabled": True,
                "interface": "127.0.0.1",
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "download_bytes": DOWNLOAD_BYTES,
            },
        )
        self.fleet = Fleet(
            reactor,
            acs_url(self.service),
            cafile=cafile(self.dir),
            arrival=Rate(None),
            devices=1,
            credentials=credential_templates("{device_id}", "diag-password-1"),
            seed=1,
        )
        await self.fleet.start()
        self.addCleanup(self.fleet.stop)
        await import_into(
            self, self.fleet.credentials_csv(), self.dir, self.redis_server.url, self.prefix
        )
        self.device = self.fleet.devices[0]
        self.assertTrue((await self.fleet.inform(self.device)).ok)

    async def run_tasks(self, *tasks: tuple[dict[str, Any], float | None]) -> list[Any]:
        submitted = [
            await self.service.tasks.submit(self.device.device_id, "diagnostic", args)
            for args, _ in tasks
        ]
        self.assertTrue((await self.fleet.inform(self.device)).ok)
        return [await self.service.tasks.wait(t.id, 30) for t in submitted]

    async def test_each_kind_completes_with_typed_results(self) -> None:
        ping, trace, download, upload, lookup, select = await self.run_tasks(
            ({"kind": "IPPing", "parameters": {"Host": "127.0.0.1", "Timeout": 2000}}, None),
            ({"kind": "TraceRoute", "parameters": {"Host": "localhost", "NumberOfTries": 2}}, None),
            ({"kind": "DownloadDiagnostics"}, None),
            ({"kind": "UploadDiagnostics", "parameters": {"TestFileLength": 300_000}}, None),
            ({"kind": "NSLookup", "parameters": {"HostName": "localhost"}}, None),
            (
                {"kind": "ServerSelection", "parameters": {"HostList": ["127.0.0.1", "localhost"]}},
                None,
            ),
        )
        for task in (ping, trace, download, upload, lookup, select):
            self.assertEqual(task.status, "done", (task.args, task.fault))
            self.assertEqual(task.result["diagnostics_state"], "Complete")

        r = ping.result["results"]
        self.assertEqual((r["SuccessCount"], r["FailureCount"]), (3, 0))
        self.assertIsInstance(r["AverageResponseTimeDetailed"], int)
        self.assertEqual(ping.result["object"], "Device.IP.Diagnostics.IPPing.")

        (hop,) = trace.result["results"]["RouteHops"]
        self.assertEqual((hop["Host"], hop["HostAddress"]), ("localhost", "127.0.0.1"))
        self.assertEqual(len(hop["RTTimes"]), 2)
        self.assertTrue(all(isinstance(t, int) for t in hop["RTTimes"]))

        r = download.result["results"]
        self.assertEqual(r["TestBytesReceived"], DOWNLOAD_BYTES)
        self.assertIsInstance(download.result["throughput_bps"], float)
        self.assertGreater(download.result["throughput_bps"], 0)
        self.assertEqual(upload.result["results"]["TestBytesSent"], 300_000)

        (answer,) = lookup.result["results"]["Result"]
        self.assertEqual((answer["Status"], answer["IPAddresses"]), ("Success", ["127.0.0.1"]))
        self.assertEqual(lookup.result["results"]["SuccessCount"], 1)

        self.assertIn(select.result["results"]["FastestHost"], ("127.0.0.1", "localhost"))
        self.assertIsInstance(select.result["results"]["MinimumResponseTime"], int)

        site = self.service._throughput.factory  # type: ignore[union-attr]
        self.assertEqual((site.downloads, site.uploads, site.refused), (1, 1, 0))
        self.assertEqual(site.uploaded_bytes, 300_000)
        # The results went into the parameter cache too.
        name = "Device.IP.Diagnostics.IPPing.SuccessCount"
        assert self.service.devices is not None
        record = await self.service.devices.get_device(self.device.device_id, [name])
        assert record is not None
        self.assertEqual(record["parameters"][name]["value"], "3")

    async def test_an_error_state_fails_the_task(self) -> None:
        (task,) = await self.run_tasks(
            ({"kind": "IPPing", "parameters": {"Host": "no-such-host.invalid"}}, None)
        )
        self.assertEqual(task.status, "failed")
        self.assertEqual(task.fault["diagnostics_state"], "Error_CannotResolveHostName")

    async def test_no_report_within_the_timeout_fails_the_task(self) -> None:
        async def never(device: Any, obj: str) -> None:
            return None  # a CPE that never finishes its test

        self.fleet._diagnostic = never  # type: ignore[method-assign]
        task = await self.service.tasks.submit(
            self.device.device_id,
            "diagnostic",
            {"kind": "IPPing", "parameters": {"Host": "127.0.0.1"}, "timeout": 1},
        )
        self.assertTrue((await self.fleet.inform(self.device)).ok)
        waiting = await self.service.tasks.get(task.id)
        self.assertEqual((waiting.status, waiting.result), ("running", {"phase": "requested"}))
        await deferLater(reactor, 1.2, lambda: None)
        await self.service.tasks.expire_due()
        task = await self.service.tasks.get(task.id)
        self.assertEqual(task.status, "failed")
        self.assertIn("8 DIAGNOSTICS COMPLETE", task.fault["reason"])

    async def test_the_endpoint_refuses_unsigned_and_expired_urls(self) -> None:
        signer = self.service.throughput_signer
        assert signer is not None
        good = signer.url("download", "t1", 1000, 60)
        status, body = await deferToThread(http, "GET", good)
        self.assertEqual((status, len(body)), (200, 1000))

        forged = good.replace("/1000/", "/100000000/")
        expired = signer.url("download", "t1", 1000, -5)
        unsigned = f"{signer.base_url}/download/1000"
        for url in (forged, expired, unsigned):
            status, _ = await deferToThread(http, "GET", url)
            self.assertEqual(status, 403, url)

        upload = signer.url("upload", "t2", 5000, 60)
        self.assertEqual((await deferToThread(http, "PUT", upload, b"x" * 5000))[0], 204)
        # Larger than signed: refused when the headers arrive.
        self.assertEqual((await deferToThread(http, "PUT", upload, b"x" * 5001))[0], 413)
        bad = upload[:-2] + ("AA" if not upload.endswith("AA") else "BB")
        self.assertEqual((await deferToThread(http, "PUT", bad, b"x" * 10))[0], 403)
        self.assertEqual((await deferToThread(http, "GET", upload))[0], 403)
