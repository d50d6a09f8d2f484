"""Secure by default, against the real gateway over real TLS sockets.

Client certificates (required and optional: good, wrong identity, other CA, expired,
none), the brute-force limit (an attacking address blocked, the device with its right
password still admitted, from that address too), and TLS 1.0/1.1 refused.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import warnings
from typing import Any

import pytest
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from tests.support import cpe_client
from tests.support.certfactory import CertAuthority
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.redis_server import unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
OTHER_ID = "9CA2F4-EC220_G5_V3-99999K0000001"
USER, PASSWORD = "sec-cpe", "sec-cpe-password-1"


@pytest.mark.usefixtures("redis_for_class")
class SecurityTests(TestCase):
    redis_server: Any

    async def start(self, **sections: dict[str, Any]) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-sec-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        service = await start_gateway(
            self, self.dir, self.redis_server.url, self.prefix, **sections
        )
        assert service.acs_port is not None
        self.url = acs_url(service)
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
        return service

    def session(self, user: str = "", password: str = "", **kw: Any) -> Any:
        return deferToThread(
            cpe_client.run_session, self.url, user, password, cafile=self.cafile, **kw
        )

    def events(self, type_: str) -> list[dict[str, Any]]:
        out = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in out if e["type"] == type_]

    def client_certs(self) -> tuple[str, dict[str, tuple[str, str]]]:
        ca, other_ca = CertAuthority("device CA"), CertAuthority("someone else's CA")
        certs = {
            "good": ca.issue_client(DEVICE_ID).write(self.certdir, "good"),
            "wrong_identity": ca.issue_client(OTHER_ID).write(self.certdir, "wrong"),
            "expired": ca.issue_client(DEVICE_ID, expired=True).write(self.certdir, "expired"),
            "other_ca": other_ca.issue_client(DEVICE_ID).write(self.certdir, "other"),
        }
        return ca.write(self.certdir), certs

    def setUp(self) -> None:
        self.certdir = tempfile.mkdtemp(prefix="cwmpgw-certs-")
        self.addCleanup(shutil.rmtree, self.certdir, True)

    async def test_client_certificates_required(self) -> None:
        ca_file, certs = self.client_certs()
        await self.start(acs={"client_certs": "required", "client_ca_file": ca_file})
        cert, key = certs["good"]
        # The certificate alone authenticates the device: no password at all.
        good = await self.session(certfile=cert, keyfile=key)
        self.assertEqual([e.status for e in good], [200, 204])
        cert, key = certs["wrong_identity"]
        wrong = await self.session(certfile=cert, keyfile=key)
        self.assertEqual([e.status for e in wrong], [403])
        self.assertEqual(
            self.events("auth.failed")[-1]["data"]["reason"],
            "the client certificate does not name this device",
        )
        for name in ("expired", "other_ca"):
            cert, key = certs[name]
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                await self.session(certfile=cert, keyfile=key)
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            await self.session(USER, PASSWORD)  # a password is no substitute when required
        self.assertEqual(len(self.events("inform")), 1)  # only the good one got in

    async def test_client_certificates_optional(self) -> None:
        ca_file, certs = self.client_certs()
        await self.start(acs={"client_certs": "optional", "client_ca_file": ca_file})
        self.assertEqual([e.status for e in await self.session(USER, PASSWORD)], [200, 204])
        cert, key = certs["good"]
        self.assertEqual(
            [e.status for e in await self.session(certfile=cert, keyfile=key)], [200, 204]
        )
        cert, key = certs["wrong_identity"]
        self.assertEqual(
            [e.status for e in await self.session(USER, PASSWORD, certfile=cert, keyfile=key)],
            [403],
        )
        for name in ("expired", "other_ca"):
            cert, key = certs[name]
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                await self.session(USER, PASSWORD, certfile=cert, keyfile=key)

    async def test_brute_force_limit(self) -> None:
        await self.start(auth={"max_failures_per_source": 3, "max_failures_per_device": 1000})
        attacker = "127.0.0.2"
        last = []
        for i in range(5):
            exchanges = await self.session(USER, f"guess-{i}", source_address=attacker)
            last.append(exchanges[0])
        self.assertEqual([e.status for e in last], [401, 401, 429, 429, 429])
        blocked = self.events("auth.blocked")
        self.assertEqual(
            [(e["data"]["kind"], e["data"]["key"]) for e in blocked], [("source", attacker)]
        )
        self.assertTrue(all(e.headers.get("retry-after") for e in last[3:]))
        # A block refuses only failing attempts: the right password gets in from the
        # blocked address (a CPE behind the same NAT) as from the device's own.
        behind = await self.session(USER, PASSWORD, source_address=attacker)
        self.assertEqual([e.status for e in behind], [200, 204])
        self.assertEqual([e.status for e in await self.session(USER, PASSWORD)], [200, 204])
        refused = await self.session(USER, "guess-5", source_address=attacker)
        self.assertEqual(refused[0].status, 429)
        dump = json.dumps(self.redis.xrange(self.prefix + "events"))
        for i in range(5):
            self.assertNotIn(f"guess-{i}", dump)

    async def test_old_tls_versions_refused(self) -> None:
        await self.start()
        port = int(self.url.rsplit(":", 1)[1].strip("/"))

        def handshake(version: ssl.TLSVersion) -> str:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with warnings.catch_warnings():  # offering TLS 1.0/1.1 is the point here
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = context.maximum_version = version
            context.set_ciphers("ALL:@SECLEVEL=0")
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with context.wrap_socket(raw) as tls:
                    return str(tls.version())

        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                await deferToThread(handshake, version)
        self.assertEqual(await deferToThread(handshake, ssl.TLSVersion.TLSv1_2), "TLSv1.2")

    async def test_stalled_handshake_is_cut(self) -> None:
        await self.start(acs={"first_byte_timeout": 1})
        port = int(self.url.rsplit(":", 1)[1].strip("/"))

        def stall() -> bytes:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
                try:
                    return raw.recv(100)  # b"" once the gateway closes the connection
                except ConnectionResetError:
                    return b""  # or aborts it

        self.assertEqual(await deferToThread(stall), b"")
