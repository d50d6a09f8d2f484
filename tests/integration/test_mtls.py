"""Client certificates: the handshake policy (off/optional/required), and how a certificate
names a device (cwmpgw.acs.certs)."""

from __future__ import annotations

import os
import ssl
from typing import Any

from OpenSSL import crypto
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvides

from cwmpgw.acs.certs import CertIdentity, certificate_identity, matches, peer_certificate
from cwmpgw.acs.tls import ReloadableServerTLS, server_options
from cwmpgw.cwmp.deviceid import device_id
from cwmpgw.cwmp.messages import DeviceId
from tests.support.certfactory import CertAuthority
from tests.support.tlskit import client_context, converse, listen, make_tempdir, write

HUAWEI = DeviceId("Huawei", "00259E", "EG8145V5", "48575443A94196A5")
NOKIA = DeviceId("Nokia", "9075BC", "G-1425G-A", "ALCL-FC265D6F")  # "-" in both
BARE = DeviceId("Acme", "A1B2C3", "", "SN0001")  # no ProductClass


class IdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertAuthority()

    def test_each_field(self) -> None:
        cert = self.ca.issue_client(
            "00259E-48575443A94196A5",
            serial_number="48575443A94196A5",
            san_dns=["cpe-1.example.net", "cpe-1.alt.example.net"],
            san_uri=["urn:dev:ops:00259E-EG8145V5-48575443A94196A5"],
        ).cert
        expected = {
            "cn": ("00259E-48575443A94196A5",),
            "serial_number": ("48575443A94196A5",),
            "san_dns": ("cpe-1.example.net", "cpe-1.alt.example.net"),
            "san_uri": ("urn:dev:ops:00259E-EG8145V5-48575443A94196A5",),
        }
        for field, values in expected.items():
            self.assertEqual(certificate_identity(cert, field), CertIdentity(values), field)
        self.assertEqual(
            certificate_identity(cert, "any").values,
            sum(expected.values(), ()),
        )

    def test_missing_fields_are_empty_and_any_deduplicates(self) -> None:
        cert = self.ca.issue_client("SN0001", serial_number="SN0001").cert
        self.assertEqual(certificate_identity(cert, "san_dns").values, ())
        self.assertEqual(certificate_identity(cert, "san_uri").values, ())
        self.assertEqual(certificate_identity(cert, "any").values, ("SN0001",))
        nameless = self.ca.issue_client().cert  # only an organizationName
        for field in ("cn", "serial_number", "any"):
            self.assertEqual(certificate_identity(nameless, field).values, ())

    def test_unknown_field(self) -> None:
        cert = self.ca.issue_client("x").cert
        e = self.assertRaises(ValueError, certificate_identity, cert, "subject")
        self.assertIn("'subject'", str(e))


class MatchTests(SynchronousTestCase):
    def check(self, values: tuple[str, ...], device: DeviceId, match: str) -> bool:
        return matches(CertIdentity(values), device, device_id(device), match)

    def test_serial(self) -> None:
        self.assertTrue(self.check(("48575443A94196A5",), HUAWEI, "serial"))
        self.assertTrue(self.check(("other", "48575443A94196A5"), HUAWEI, "serial"))
        self.assertFalse(self.check(("48575443a94196a5",), HUAWEI, "serial"))  # exact
        self.assertFalse(self.check(("00259E-48575443A94196A5",), HUAWEI, "serial"))
        self.assertFalse(self.check(("SN0001",), HUAWEI, "serial"))

    def test_oui_serial(self) -> None:
        self.assertTrue(self.check(("00259E-48575443A94196A5",), HUAWEI, "oui_serial"))
        self.assertTrue(self.check(("9075BC-ALCL-FC265D6F",), NOKIA, "oui_serial"))  # raw
        self.assertFalse(self.check(("9075BC-ALCL%2DFC265D6F",), NOKIA, "oui_serial"))
        self.assertFalse(self.check(("48575443A94196A5",), HUAWEI, "oui_serial"))
        self.assertFalse(self.check(("00259E-EG8145V5-48575443A94196A5",), HUAWEI, "oui_serial"))
        # A certificate for 9075BC + "ALCL-FC265D6F" must not pass for OUI "9075BC-ALCL".
        forged = DeviceId("Nokia", "9075BC-ALCL", "", "FC265D6F")
        self.assertFalse(self.check(("9075BC-ALCL-FC265D6F",), forged, "oui_serial"))

    def test_device_id(self) -> None:
        self.assertTrue(self.check(("00259E-EG8145V5-48575443A94196A5",), HUAWEI, "device_id"))
        self.assertTrue(self.check(("9075BC-G%2D1425G%2DA-ALCL%2DFC265D6F",), NOKIA, "device_id"))
        self.assertFalse(self.check(("9075BC-G-1425G-A-ALCL-FC265D6F",), NOKIA, "device_id"))
        self.assertTrue(self.check(("A1B2C3-SN0001",), BARE, "device_id"))
        self.assertFalse(self.check(("00259E-48575443A94196A5",), HUAWEI, "device_id"))

    def test_wrong_device_never_matches(self) -> None:
        huawei = ("00259E-EG8145V5-48575443A94196A5", "00259E-48575443A94196A5")
        for match in ("serial", "oui_serial", "device_id"):
            self.assertFalse(self.check((*huawei, "48575443A94196A5"), NOKIA, match), match)
            self.assertFalse(self.check((), HUAWEI, match), match)

    def test_empty_serial_never_matches(self) -> None:
        empty = DeviceId("Acme", "A1B2C3", "", "")
        for match in ("serial", "oui_serial", "device_id"):
            self.assertFalse(self.check(("", "A1B2C3-", "A1B2C3"), empty, match), match)

    def test_unknown_mode(self) -> None:
        e = self.assertRaises(ValueError, self.check, ("x",), HUAWEI, "cn")
        self.assertIn("'cn'", str(e))


class _FakeTLS(StringTransport):
    """Just enough of a TLS transport: declared ISSLTransport, with a peer certificate."""

    def __init__(self, cert: Any) -> None:
        super().__init__()
        self.cert = cert
        directlyProvides(self, ISSLTransport)

    def getPeerCertificate(self) -> Any:
        return self.cert


class PeerCertificateTests(SynchronousTestCase):
    def test_not_tls(self) -> None:
        self.assertIsNone(peer_certificate(StringTransport()))
        self.assertIsNone(peer_certificate(object()))

    def test_pyopenssl_or_cryptography_or_none(self) -> None:
        cert = CertAuthority().issue_client("x").cert
        self.assertEqual(peer_certificate(_FakeTLS(crypto.X509.from_cryptography(cert))), cert)
        self.assertEqual(peer_certificate(_FakeTLS(cert)), cert)
        self.assertIsNone(peer_certificate(_FakeTLS(None)))


class ClientCertSettingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = make_tempdir(self)
        self.ca = CertAuthority()
        self.cert_path, self.key_path = self.ca.issue_server().write(self.dir, "server")
        self.ca_path = self.ca.write(self.dir)

    def test_unknown_mode(self) -> None:
        e = self.assertRaises(
            ValueError, server_options, self.cert_path, self.key_path, client_certs="yes"
        )
        self.assertIn("'yes'", str(e))

    def test_needs_ca_file(self) -> None:
        for mode in ("optional", "required"):
            e = self.assertRaises(
                ValueError, server_options, self.cert_path, self.key_path, client_certs=mode
            )
            self.assertIn("ca_file", str(e))

    def test_bad_ca_file_names_it(self) -> None:
        bad = os.path.join(self.dir, "bad-ca.pem")
        write(bad, b"not a certificate\n")
        missing = os.path.join(self.dir, "missing.pem")
        for path in (bad, missing):
            e = self.assertRaises(
                ValueError,
                server_options,
                self.cert_path,
                self.key_path,
                client_certs="required",
                ca_file=path,
            )
            self.assertIn(path, str(e))

    def test_verify_modes(self) -> None:
        from OpenSSL import SSL

        def mode(client_certs: str) -> int:
            options = server_options(
                self.cert_path, self.key_path, client_certs=client_certs, ca_file=self.ca_path
            )
            return options.getContext().get_verify_mode()

        self.assertEqual(mode("off"), SSL.VERIFY_NONE)
        self.assertTrue(mode("optional") & SSL.VERIFY_PEER)
        self.assertFalse(mode("optional") & SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        self.assertTrue(mode("required") & SSL.VERIFY_PEER)
        self.assertTrue(mode("required") & SSL.VERIFY_FAIL_IF_NO_PEER_CERT)


class MutualTLSTests(TestCase):
    """Real handshakes: a Twisted server with each policy, stdlib clients with each certificate."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = make_tempdir(self)
        self.ca = CertAuthority("Operator Device CA")
        self.other_ca = CertAuthority("Someone Else's CA")
        self.ca_path = self.ca.write(self.dir, "device-ca")
        self.server_ca_path = self.ca.write(self.dir, "server-ca")
        self.server = self.ca.issue_server().write(self.dir, "server")
        self.good = self.ca.issue_client("00259E-EG8145V5-48575443A94196A5")
        self.certs = {
            "good": self.good.write(self.dir, "good"),
            "expired": self.ca.issue_client("00259E-X-1", expired=True).write(self.dir, "old"),
            "other_ca": self.other_ca.issue_client("00259E-EG8145V5-48575443A94196A5").write(
                self.dir, "other"
            ),
        }

    async def serve(self, client_certs: str) -> tuple[int, Any]:
        options = server_options(*self.server, client_certs=client_certs, ca_file=self.ca_path)
        return await listen(self, options)

    def context(self, cert: str | None, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        return client_context(
            self.server_ca_path, version, cert=None if cert is None else self.certs[cert]
        )

    async def test_required(self) -> None:
        port, factory = await self.serve("required")
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for cert in (None, "expired", "other_ca"):
                seen = await deferToThread(converse, port, self.context(cert, version))
                self.assertIn("refused", seen, (version, cert))
            # Refused in the handshake: the application never saw a byte.
            self.assertEqual(factory.handshakes, [])
            self.assertEqual(factory.received, [])
            seen = await deferToThread(converse, port, self.context("good", version))
            self.assertNotIn("refused", seen, version)
            self.assertEqual(factory.handshakes[-1].peer, self.good.cert)
            factory.handshakes.clear()
            factory.received.clear()

    async def test_required_refusal_reasons(self) -> None:
        port, _ = await self.serve("required")
        reasons = {
            cert: (await deferToThread(converse, port, self.context(cert)))["refused"].upper()
            for cert in (None, "expired", "other_ca")
        }
        self.assertIn("CERTIFICATE_REQUIRED", reasons[None])
        self.assertIn("CERTIFICATE_EXPIRED", reasons["expired"])
        self.assertIn("UNKNOWN_CA", reasons["other_ca"])

    async def test_optional(self) -> None:
        port, factory = await self.serve("optional")
        seen = await deferToThread(converse, port, self.context(None))
        self.assertNotIn("refused", seen)
        self.assertIsNone(factory.handshakes[-1].peer)

        seen = await deferToThread(converse, port, self.context("good"))
        self.assertNotIn("refused", seen)
        peer = factory.handshakes[-1].peer
        self.assertEqual(peer, self.good.cert)
        assert peer is not None
        identity = certificate_identity(peer, "cn")
        self.assertEqual(identity.values, ("00259E-EG8145V5-48575443A94196A5",))
        self.assertTrue(matches(identity, HUAWEI, device_id(HUAWEI), "device_id"))
        self.assertFalse(matches(identity, NOKIA, device_id(NOKIA), "device_id"))

        count = len(factory.handshakes)
        for cert in ("other_ca", "expired"):
            seen = await deferToThread(converse, port, self.context(cert))
            self.assertIn("refused", seen, cert)
        self.assertEqual(len(factory.handshakes), count)

    async def test_off_asks_for_nothing(self) -> None:
        port, factory = await self.serve("off")
        for cert in (None, "good", "other_ca"):
            seen = await deferToThread(converse, port, self.context(cert))
            self.assertNotIn("refused", seen, cert)
        self.assertEqual([h.peer for h in factory.handshakes], [None, None, None])

    async def test_chain_through_an_intermediate(self) -> None:
        vendor = CertAuthority("Vendor Intermediate", parent=self.ca)
        self.certs["via_intermediate"] = vendor.issue_client("A1B2C3-SN0001").write(
            self.dir, "chained"
        )
        port, factory = await self.serve("required")
        seen = await deferToThread(converse, port, self.context("via_intermediate"))
        self.assertNotIn("refused", seen)
        peer = factory.handshakes[-1].peer
        assert peer is not None
        self.assertTrue(
            matches(certificate_identity(peer, "any"), BARE, device_id(BARE), "oui_serial")
        )

    async def test_reload_swaps_the_client_ca(self) -> None:
        ca_file = os.path.join(self.dir, "current-ca.pem")
        write(ca_file, self.ca.pem())
        tls = ReloadableServerTLS(*self.server, client_certs="required", ca_file=ca_file)
        port, _ = await listen(self, tls)
        self.assertNotIn("refused", await deferToThread(converse, port, self.context("good")))
        self.assertIn("refused", await deferToThread(converse, port, self.context("other_ca")))

        write(ca_file, self.other_ca.pem())
        with capturedLogs():
            self.assertTrue(tls.reload())
        self.assertIn("refused", await deferToThread(converse, port, self.context("good")))
        self.assertNotIn("refused", await deferToThread(converse, port, self.context("other_ca")))
