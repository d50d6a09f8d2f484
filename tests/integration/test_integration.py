"""The whole gateway over real TLS on 127.0.0.1, a real redis-server, and outside clients.

The CPE is tests/support/cpe_client.py (http.client + ssl, nothing from cwmpgw) and the event
consumer is redis-py, so these tests see the gateway the way a router and a back-office
system do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.config import parse_config
from cwmpgw.service import GatewayService, make_service
from tests.support import cpe_client
from tests.support.gateway import acs_url, cafile, import_credentials, start_gateway
from tests.support.redis_server import unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = "cpe-9CA2F4-22275K2000315", "correct horse battery staple"


def collect_events(pubsub: Any, until: str, deadline: float = 15.0) -> list[dict[str, Any]]:
    """Read pub/sub messages until an event of type ``until`` arrives (bounded)."""
    events: list[dict[str, Any]] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":
            events.append(json.loads(message["data"]))
            if events[-1]["type"] == until:
                break
    return events


@pytest.mark.usefixtures("redis_for_class")
class GatewayOverTlsTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-it-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        # Provisioning and STUN as shipped (tests/support/gateway.py turns them off by default).
        self.service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            gateway={"node": "it-node"},
            connreq={"stun": True},
            provision={"credentials": True, "periodic_inform": True},
            redis={"call_timeout": 7},
            events={"spool_max_mb": 3},
        )
        # The configured bounds reach the parts that apply them.
        self.assertEqual(self.service.availability.call_timeout, 7.0)
        self.assertEqual(self.service.spool.max_bytes, 3 * 1024 * 1024)
        self.url = acs_url(self.service)
        self.cafile = cafile(self.dir)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        self.pubsub = self.redis.pubsub()
        self.addCleanup(self.pubsub.close)
        self.pubsub.psubscribe(self.prefix + "events:*")
        confirmation = self.pubsub.get_message(timeout=5)
        assert confirmation and confirmation["type"] == "psubscribe"
        result = await deferToThread(
            import_credentials,
            f"device_id,username,password\n{DEVICE_ID},{USER},{PASSWORD}\n",
            self.dir,
            "--redis",
            self.redis_server.url,
            "--prefix",
            self.prefix,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("1 credential(s) set", result.stdout)
        self.assertNotIn(PASSWORD, result.stdout + result.stderr)

    async def test_digest_session_over_tls_seen_by_plain_subscriber(self) -> None:
        for algorithm in ("MD5", "SHA-256"):
            exchanges = await deferToThread(
                cpe_client.run_session,
                self.url,
                USER,
                PASSWORD,
                cafile=self.cafile,
                transfer_complete=algorithm == "MD5",
                algorithm=algorithm,
            )
            self.assertEqual([e.status for e in exchanges][-1], 204)
            self.assertIn(b"InformResponse", exchanges[0].body)
        events = await deferToThread(collect_events, self.pubsub, "session.closed")
        self.assertEqual(
            [e["type"] for e in events],
            ["device.registered", "inform", "transfer.complete", "session.closed"],
        )
        for event in events:
            self.assertEqual((event["v"], event["node"]), (1, "it-node"))
            self.assertEqual(event["device"]["id"], DEVICE_ID)
        self.assertEqual(events[-1]["data"]["outcome"], "completed")
        self.assertEqual(events[-1]["data"]["rpc_count"], 2)
        second = await deferToThread(collect_events, self.pubsub, "session.closed")
        self.assertEqual([e["type"] for e in second], ["inform", "session.closed"])
        stream = self.redis.xrange(self.prefix + "events")
        self.assertEqual(
            [json.loads(fields["event"])["id"] for _, fields in stream],
            [e["id"] for e in events + second],
        )
        device = self.redis.hgetall(self.prefix + "device:" + DEVICE_ID)
        self.assertEqual(device["last_source"], "127.0.0.1")
        self.assertEqual(device["connection_request_url"], "http://127.0.0.1:7548/cr")
        self.assertEqual(device["inform_count"], "2")
        dump = json.dumps(events + second) + json.dumps(
            self.redis.hgetall(self.prefix + "cred:" + USER)
        )
        self.assertNotIn(PASSWORD, dump)
        # The same two sessions, as an operator's Prometheus sees them.
        import urllib.request

        port = self.service.metrics_port.getHost().port
        text = await deferToThread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
                .read()
                .decode()
            )
        )
        self.assertIn('cwmpgw_sessions_total{outcome="completed"} 2.0', text)
        self.assertIn('cwmpgw_rpcs_total{method="TransferComplete",result="cpe"} 1.0', text)
        self.assertIn('cwmpgw_events_published_total{type="inform"} 2.0', text)
        self.assertIn("cwmpgw_redis_up 1.0", text)

    async def test_wrong_password_is_refused_and_published(self) -> None:
        exchanges = await deferToThread(
            cpe_client.run_session, self.url, USER, "not the password", cafile=self.cafile
        )
        self.assertEqual([e.status for e in exchanges], [401])
        events = await deferToThread(collect_events, self.pubsub, "auth.failed")
        self.assertEqual(events[-1]["type"], "auth.failed")
        self.assertEqual(events[-1]["data"]["source"], "127.0.0.1")
        self.assertNotIn("not the password", json.dumps(events))
        self.assertEqual(self.redis.exists(self.prefix + "device:" + DEVICE_ID), 0)


class EmbeddedRedisGatewayTests(TestCase):
    """With no Redis configured, the gateway runs its own and keeps data across restarts."""

    async def start(self, directory: str, hostname: str = "localhost") -> GatewayService:
        config = parse_config(
            {
                "gateway": {"data_dir": directory},
                "acs": {"port": 0, "interface": "127.0.0.1", "hostname": hostname},
                "nbi": {"port": 0},
                "metrics": {"port": 0},
                "files": {"port": 0, "interface": "127.0.0.1"},
                "auth": {
                    "unknown_devices": "enroll",
                    "bootstrap_username": "bootstrap",
                    "bootstrap_password": "shared-bootstrap-secret",
                },
                # Persistence is what this test is about; tests/integration/test_provisioning.py
                # covers what the gateway sets on an enrolling device.
                "provision": {"credentials": False, "periodic_inform": False},
            }
        )
        service = make_service(config, reactor)
        assert isinstance(service, GatewayService)
        service.startService()
        await service.whenStarted()
        return service

    async def test_enroll_persist_and_stop(self) -> None:
        directory = tempfile.mkdtemp(prefix="cwmpgw-it-")
        self.addCleanup(shutil.rmtree, directory, True)
        service = await self.start(directory)
        try:
            assert service.acs_port is not None
            url = f"https://127.0.0.1:{service.acs_port.getHost().port}/"
            cafile = os.path.join(directory, "tls", "acs-cert.pem")
            exchanges = await deferToThread(
                cpe_client.run_session,
                url,
                "bootstrap",
                "shared-bootstrap-secret",
                cafile=cafile,
                event="0 BOOTSTRAP",
            )
            self.assertEqual([e.status for e in exchanges], [200, 204])
            # A CPE that speaks only RSA-authenticated TLS 1.2 gets the RSA certificate.
            port = service.acs_port.getHost().port
            rsa_cafile = os.path.join(directory, "tls", "acs-rsa-cert.pem")
            peer = await deferToThread(
                tls12_peer, port, rsa_cafile, "localhost", "ECDHE-RSA-AES128-GCM-SHA256"
            )
            self.assertIsInstance(peer.public_key(), rsa.RSAPublicKey)
            redis_pid = service.embedded_redis.pid
            self.assertIsNotNone(redis_pid)
        finally:
            await service.stopService()
        self.assertRaises(ProcessLookupError, os.kill, redis_pid, 0)
        first_certs = read_certs(directory)

        service = await self.start(directory)
        try:
            device = await service.redis.hgetall("cwmpgw:device:" + DEVICE_ID)
            self.assertEqual(device["serial_number"], "22275K2000315")
            self.assertEqual(read_certs(directory), first_certs)  # same names: kept
        finally:
            await service.stopService()

        # A new acs.hostname: certificates that name it, served from this start on.
        service = await self.start(directory, hostname="acs.example.net")
        try:
            self.assertTrue(set(read_certs(directory)).isdisjoint(first_certs))
            port = service.acs_port.getHost().port
            for cafile, ciphers in (
                ("acs-rsa-cert.pem", "ECDHE-RSA-AES128-GCM-SHA256"),
                ("acs-cert.pem", "ECDHE-ECDSA-AES128-GCM-SHA256"),
            ):
                path = os.path.join(directory, "tls", cafile)
                peer = await deferToThread(tls12_peer, port, path, "acs.example.net", ciphers)
                san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                self.assertIn("acs.example.net", san.value.get_values_for_type(x509.DNSName))
        finally:
            await service.stopService()


def read_certs(directory: str) -> list[bytes]:
    """The generated ECDSA and RSA certificates, as they are on disk."""
    certs = []
    for name in ("acs-cert.pem", "acs-rsa-cert.pem"):
        with open(os.path.join(directory, "tls", name), "rb") as f:
            certs.append(f.read())
    return certs


def tls12_peer(port: int, cafile: str, hostname: str, ciphers: str) -> x509.Certificate:
    """Handshake as a TLS 1.2 client offering only ciphers, verifying hostname against cafile."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_twistd_runs_the_gateway(tmp_path: Any) -> None:
    """The README's run command, as a real process: listens, serves a session, stops on SIGTERM."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    data = tmp_path / "data"
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "cwmpgw", "--port", "0", "--data-dir", str(data)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"ACS endpoint listening on https://[^:]+:(\d+)/", line)
            if match:
                port = int(match.group(1))
        assert port, "".join(lines)
        assert any("SHA-256 fingerprint" in line for line in lines), "".join(lines)
        # Reject policy by default: an unknown CPE is challenged, then refused.
        exchanges = cpe_client.run_session(
            f"https://127.0.0.1:{port}/",
            "nobody",
            "nothing",
            cafile=str(data / "tls" / "acs-cert.pem"),
        )
        assert [e.status for e in exchanges] == [401]
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        lines.append(out)
    log = "".join(lines)
    # twistd re-raises the SIGTERM it handled once it has shut down cleanly.
    assert process.returncode in (0, -signal.SIGTERM), log
    assert "Server Shut Down." in log
    assert "Traceback" not in log, log
    assert "embedded redis-server" in log
    assert not (data / "redis" / "redis.sock").exists()
