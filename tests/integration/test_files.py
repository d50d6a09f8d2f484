"""The file server end to end: real TLS, real Redis, grants per device.

Files go in through the store (the API route has its own tests); CPEs fetch and upload
over HTTPS with urllib in a thread, as a CPE's HTTP client would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from typing import Any

import pytest
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.files.signing import Grant
from cwmpgw.service import GatewayService
from cwmpgw.tasks.model import Task
from tests.support.gateway import cafile, start_gateway
from tests.support.redis_server import unique_prefix

DEV_A = "00D09E-Router-A0001"
DEV_B = "00D09E-Router-B0002"
IMAGE = os.urandom(300_000) + b"end of image"


def http(
    url: str,
    cafile: str,
    *,
    method: str = "GET",
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body), blocking: for a thread."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    url = url.replace("localhost", "127.0.0.1")
    request = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def task(task_type: str, device_id: str, **args: Any) -> Task:
    return Task(f"t-{os.urandom(4).hex()}", device_id, task_type, args, 0.0, 0.0)


@pytest.mark.usefixtures("redis_for_class")
class FileServerTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        self.dir = tempfile.mkdtemp(prefix="cwmpgw-files-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.service: GatewayService = await start_gateway(
            self, self.dir, self.redis_server.url, unique_prefix()
        )
        self.ca = cafile(self.dir)
        files = self.service.files
        assert files is not None
        self.store, self.links = files.store, files.links
        body = self.store.incoming()
        body.write(IMAGE)
        self.info = await self.store.add(
            body, name="fw 2.0.bin", file_type="1 Firmware Upgrade Image", software_version="2.0"
        )

    async def get(self, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return await deferToThread(http, url, self.ca, **kwargs)

    async def test_a_device_fetches_its_file_whole_and_in_ranges(self) -> None:
        args = await self.links.resolve(task("Download", DEV_A, file=self.info.id))
        self.assertEqual(args["file_size"], len(IMAGE))
        self.assertEqual(args["target_file_name"], "fw 2.0.bin")
        self.assertEqual(args["username"], DEV_A)
        self.assertNotIn("file", args)
        self.assertLessEqual(len(args["url"]), 256)
        auth = (args["username"], args["password"])
        status, headers, body = await self.get(args["url"], auth=auth)
        self.assertEqual((status, body), (200, IMAGE))
        self.assertEqual(headers["Content-Length"], str(len(IMAGE)))
        self.assertEqual(headers["Accept-Ranges"], "bytes")
        self.assertEqual(headers["ETag"], f'"{hashlib.sha256(IMAGE).hexdigest()}"')
        # A CPE resuming a broken download.
        status, headers, body = await self.get(
            args["url"], auth=auth, headers={"Range": "bytes=100000-"}
        )
        self.assertEqual((status, body), (206, IMAGE[100000:]))
        self.assertEqual(headers["Content-Length"], str(len(IMAGE) - 100000))
        self.assertEqual(headers["Content-Range"], f"bytes 100000-{len(IMAGE) - 1}/{len(IMAGE)}")
        status, _, body = await self.get(args["url"], auth=auth, headers={"Range": "bytes=5-9"})
        self.assertEqual((status, body), (206, IMAGE[5:10]))
        status, headers, body = await self.get(args["url"], auth=auth, method="HEAD")
        self.assertEqual((status, body, headers["Content-Length"]), (200, b"", str(len(IMAGE))))
        status, _, _ = await self.get(
            args["url"], auth=auth, headers={"Range": f"bytes={len(IMAGE) + 5}-"}
        )
        self.assertEqual(status, 416)

    async def test_a_url_for_one_device_is_refused_for_another(self) -> None:
        a = await self.links.resolve(task("Download", DEV_A, file=self.info.id))
        b = await self.links.resolve(task("Download", DEV_B, file=self.info.id))
        # B's own credentials with A's URL: refused.
        status, _, _ = await self.get(a["url"], auth=(b["username"], b["password"]))
        self.assertEqual(status, 403)
        # A's URL alone (leaked): credentials are required.
        status, headers, _ = await self.get(a["url"])
        self.assertEqual(status, 401)
        self.assertIn("Basic", headers["WWW-Authenticate"])
        # B claiming to be A, or A's URL changed to name B: refused.
        status, _, _ = await self.get(a["url"], auth=(DEV_A, b["password"]))
        self.assertEqual(status, 401)
        status, _, _ = await self.get(
            a["url"].replace("d=00D09E-Router-A0001", "d=00D09E-Router-B0002"),
            auth=(b["username"], b["password"]),
        )
        self.assertEqual(status, 403)
        # Credentials for one file do not open another.
        body = self.store.incoming()
        body.write(b"other")
        other = await self.store.add(body, name="cfg", file_type="3 Vendor Configuration File")
        status, _, _ = await self.get(
            a["url"].replace(self.info.id, other.id), auth=(a["username"], a["password"])
        )
        self.assertEqual(status, 403)
        status, _, _ = await self.get(
            a["url"].split("?")[0].replace(self.info.id, other.id),
            auth=(a["username"], a["password"]),
        )
        self.assertEqual(status, 401)
        # Expired grants are refused.
        assert self.links.signer is not None
        old = Grant("get", self.info.id, DEV_A, 1000)
        url = a["url"].split("?")[0] + "?" + self.links.signer.query(old)
        status, _, _ = await self.get(url, auth=(DEV_A, self.links.signer.password(old)))
        self.assertEqual(status, 403)

    async def test_short_links_carry_the_grant_in_the_credentials(self) -> None:
        self.links._style = "short"
        args = await self.links.resolve(task("Download", DEV_A, file=self.info.id))
        self.assertTrue(args["url"].endswith("/f/" + self.info.id), args["url"])
        status, _, body = await self.get(args["url"], auth=(args["username"], args["password"]))
        self.assertEqual((status, body), (200, IMAGE))
        status, _, _ = await self.get(args["url"])
        self.assertEqual(status, 401)

    async def test_a_device_uploads_to_its_slot(self) -> None:
        upload = task("Upload", DEV_A, file_type="1 Vendor Configuration File")
        args = await self.links.resolve(upload)
        self.assertIn("/u/" + upload.id, args["url"])
        config = b"<config>" + os.urandom(100_000) + b"</config>"
        status, _, _ = await self.get(
            args["url"], method="PUT", data=config, auth=(args["username"], args["password"])
        )
        self.assertEqual(status, 200)
        uploads = await self.store.list(origin="cpe")
        self.assertEqual(len(uploads), 1)
        info = uploads[0]
        self.assertEqual(
            (info.device_id, info.task_id, info.size, info.file_type),
            (DEV_A, upload.id, len(config), "1 Vendor Configuration File"),
        )
        self.assertEqual(info.sha256, hashlib.sha256(config).hexdigest())
        with open(self.store.path(info.id), "rb") as f:
            self.assertEqual(f.read(), config)
        # Another device cannot upload into A's slot, nor fetch with a put grant.
        b = await self.links.resolve(task("Upload", DEV_B, file_type="2 Vendor Log File"))
        status, _, _ = await self.get(
            args["url"], method="PUT", data=b"x", auth=(b["username"], b["password"])
        )
        self.assertEqual(status, 401)  # B's credentials are for B's slot only
        # No stray temporary files are left behind.
        leftovers = [n for n in os.listdir(self.store.directory) if n.startswith(".incoming")]
        self.assertEqual(leftovers, [])
        # The upload is announced.
        import redis

        r = redis.Redis(self.redis_server.host, self.redis_server.port, decode_responses=True)
        self.addCleanup(r.close)
        entries = r.xrange(self.service.config.redis.prefix + "events")
        kinds = [e[1]["type"] for e in entries]
        self.assertIn("file.uploaded", kinds)
        uploaded = next(
            json.loads(e[1]["event"]) for e in entries if e[1]["type"] == "file.uploaded"
        )
        self.assertEqual(uploaded["device"]["id"], DEV_A)

    async def test_an_upload_over_the_cap_is_refused(self) -> None:
        upload = task("Upload", DEV_A, file_type="2 Vendor Log File")
        args = await self.links.resolve(upload)
        site = self.service.files.site  # type: ignore[union-attr]
        assert site is not None
        site.max_upload_bytes = 1000
        status, _, _ = await self.get(
            args["url"], method="PUT", data=b"x" * 5000, auth=(args["username"], args["password"])
        )
        self.assertEqual(status, 413)
        self.assertEqual(await self.store.list(origin="cpe"), [])
