"""The ACS's server TLS: first-run certificate, loading, the policy, reload and SIGHUP."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import signal
import socket
import ssl
import stat
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from cwmpgw.acs.tls import (
    ReloadableServerTLS,
    ensure_self_signed,
    fingerprint_sha256,
    install_sighup,
    server_options,
)
from tests.support.certfactory import CertAuthority, pem
from tests.support.tlskit import Client, client_context, converse, listen, make_tempdir, write


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def snapshot(path: str) -> tuple[bytes, int, int]:
    st = os.stat(path)
    return read(path), st.st_ino, st.st_mtime_ns


class SelfSignedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = make_tempdir(self)

    def test_generates_ec_p256_pair_with_private_key_file(self) -> None:
        (cert_path, key_path), _ = ensure_self_signed(self.data_dir)
        tls_dir = os.path.join(self.data_dir, "tls")
        self.assertEqual(cert_path, os.path.join(tls_dir, "acs-cert.pem"))
        self.assertEqual(key_path, os.path.join(tls_dir, "acs-key.pem"))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual(
            sorted(os.listdir(tls_dir)),
            ["acs-cert.pem", "acs-key.pem", "acs-rsa-cert.pem", "acs-rsa-key.pem"],
        )

        key = serialization.load_pem_private_key(read(key_path), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        cert = x509.load_pem_x509_certificate(read(cert_path))
        self.assertEqual(
            cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def test_certificate_contents(self) -> None:
        (cert_path, _), _ = ensure_self_signed(self.data_dir, "acs.example.net")
        cert = x509.load_pem_x509_certificate(read(cert_path))
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, "acs.example.net")
        self.assertEqual(cert.issuer, cert.subject)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["acs.example.net", "localhost"])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )
        validity = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(validity, datetime.timedelta(days=3651))
        self.assertIsInstance(cert.signature_hash_algorithm, hashes.SHA256)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_ip_hostname_becomes_ip_san(self) -> None:
        (cert_path, _), _ = ensure_self_signed(self.data_dir, "192.0.2.10")
        cert = x509.load_pem_x509_certificate(read(cert_path))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(ipaddress.ip_address("192.0.2.10"), san.get_values_for_type(x509.IPAddress))
        self.assertNotIn("192.0.2.10", san.get_values_for_type(x509.DNSName))

    def test_reuse_leaves_files_untouched(self) -> None:
        pairs = ensure_self_signed(self.data_dir, "acs.example.net")
        files = [path for pair in pairs for path in pair]
        before = [snapshot(p) for p in files]
        with capturedLogs() as events:
            again = ensure_self_signed(self.data_dir, "acs.example.net")
        self.assertEqual(again, pairs)
        self.assertEqual([snapshot(p) for p in files], before)
        self.assertEqual(events, [])  # nothing generated, nothing said

    def test_missing_certificate_regenerates_pair(self) -> None:
        ecdsa, (rsa_cert, rsa_key) = ensure_self_signed(self.data_dir)
        cert_path, key_path = ecdsa
        old_key, rsa_before = read(key_path), [snapshot(rsa_cert), snapshot(rsa_key)]
        os.unlink(cert_path)
        with capturedLogs() as events:
            ensure_self_signed(self.data_dir)
        self.assertNotEqual(read(key_path), old_key)
        server_options(cert_path, key_path)  # the new pair matches
        self.assertEqual([snapshot(rsa_cert), snapshot(rsa_key)], rsa_before)  # only that one
        [event] = events
        self.assertEqual(event["ecdsa_fingerprint"], fingerprint_sha256(read(cert_path)))
        self.assertIsNone(event["rsa_fingerprint"])

    def test_fingerprint_format(self) -> None:
        (cert_path, _), _ = ensure_self_signed(self.data_dir)
        pem = read(cert_path)
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        expected = hashlib.sha256(der).hexdigest().upper()
        fingerprint = fingerprint_sha256(pem)
        self.assertEqual(fingerprint.replace(":", ""), expected)
        self.assertEqual(len(fingerprint.split(":")), 32)
        self.assertRegex(fingerprint, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")

    def test_rsa_pair_beside_for_the_same_names(self) -> None:
        (ec_cert, _), (rsa_cert, rsa_key) = ensure_self_signed(self.data_dir, "acs.example.net")
        tls_dir = os.path.join(self.data_dir, "tls")
        self.assertEqual(
            (rsa_cert, rsa_key),
            (os.path.join(tls_dir, "acs-rsa-cert.pem"), os.path.join(tls_dir, "acs-rsa-key.pem")),
        )
        self.assertEqual(stat.S_IMODE(os.stat(rsa_key).st_mode), 0o600)
        key = serialization.load_pem_private_key(read(rsa_key), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)
        cert = x509.load_pem_x509_certificate(read(rsa_cert))
        self.assertEqual(san_of(cert), san_of(x509.load_pem_x509_certificate(read(ec_cert))))
        # RSA key exchange (the legacy suites) encrypts to the key: RFC 5280 wants this bit.
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_encipherment and usage.digital_signature)

    def test_hostname_change_regenerates_both(self) -> None:
        old = ensure_self_signed(self.data_dir, "old.example.net")
        old_fingerprints = [fingerprint_sha256(read(cert)) for cert, _ in old]
        with capturedLogs() as events:
            new = ensure_self_signed(self.data_dir, "acs.example.net")
        self.assertEqual(new, old)  # same files, new contents
        new_fingerprints = [fingerprint_sha256(read(cert)) for cert, _ in new]
        for cert_path, key_path in new:
            cert = x509.load_pem_x509_certificate(read(cert_path))
            self.assertEqual(san_of(cert)[0], "acs.example.net")
            self.assertNotIn("old.example.net", san_of(cert))
            server_options(cert_path, key_path)  # each new key matches its certificate
        self.assertTrue(set(new_fingerprints).isdisjoint(old_fingerprints))
        [event] = events  # one line says it, with both new fingerprints
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual([event["ecdsa_fingerprint"], event["rsa_fingerprint"]], new_fingerprints)
        self.assertIn("old.example.net", event["reason"])
        text = formatEvent(event)
        for fingerprint in new_fingerprints:
            self.assertIn(fingerprint, text)

    def test_torn_pair_is_made_again(self) -> None:
        # A crash between the two renames: the new key beside the old certificate.
        (cert_path, key_path), _ = ensure_self_signed(self.data_dir)
        other_dir = make_tempdir(self)
        (_, other_key), _ = ensure_self_signed(other_dir)
        write(key_path, read(other_key))
        with capturedLogs():
            ensure_self_signed(self.data_dir)
        server_options(cert_path, key_path)

    def test_certificate_not_made_here_is_never_overwritten(self) -> None:
        pairs = ensure_self_signed(self.data_dir, "old.example.net")
        (_, _), (rsa_cert, rsa_key) = pairs
        issued = CertAuthority().issue_server("old.example.net", key_type="rsa")
        write(rsa_cert, issued.cert_pem())
        write(rsa_key, issued.key_pem())
        files = [path for pair in pairs for path in pair]
        before = [snapshot(p) for p in files]
        e = self.assertRaises(ValueError, ensure_self_signed, self.data_dir, "acs.example.net")
        self.assertIn(rsa_cert, str(e))
        self.assertIn("acs.cert_file", str(e))
        self.assertEqual([snapshot(p) for p in files], before)  # the ECDSA pair too


def san_of(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


class ServerOptionsErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = make_tempdir(self)
        (self.cert_path, self.key_path), _ = ensure_self_signed(self.data_dir)

    def test_missing_file_names_path(self) -> None:
        missing = os.path.join(self.data_dir, "nope.pem")
        e = self.assertRaises(ValueError, server_options, missing, self.key_path)
        self.assertIn(missing, str(e))
        e = self.assertRaises(ValueError, server_options, self.cert_path, missing)
        self.assertIn(missing, str(e))

    def test_garbage_certificate(self) -> None:
        bad = os.path.join(self.data_dir, "bad.pem")
        write(bad, b"not a certificate\n")
        e = self.assertRaises(ValueError, server_options, bad, self.key_path)
        self.assertIn(bad, str(e))

    def test_garbage_or_encrypted_key_without_key_material(self) -> None:
        bad = os.path.join(self.data_dir, "bad-key.pem")
        write(bad, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        e = self.assertRaises(ValueError, server_options, self.cert_path, bad)
        self.assertIn(bad, str(e))
        self.assertNotIn("AAAA", str(e))

        key = serialization.load_pem_private_key(read(self.key_path), password=None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        write(bad, encrypted)
        e = self.assertRaises(ValueError, server_options, self.cert_path, bad)
        self.assertIn(bad, str(e))

    def test_mismatched_key(self) -> None:
        other_dir = make_tempdir(self)
        (_, other_key), _ = ensure_self_signed(other_dir)
        e = self.assertRaises(ValueError, server_options, self.cert_path, other_key)
        message = str(e)
        self.assertIn(other_key, message)
        self.assertIn(self.cert_path, message)
        self.assertNotIn("PRIVATE KEY", message)
        self.assertIsNone(e.__cause__)


# -- real handshakes: a probe server and blocking stdlib clients (shared with test_mtls) ----


async def open_client(
    case: TestCase, port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> Client:
    client = await deferToThread(Client, port, ctx, session)
    case.addCleanup(deferToThread, client.close)
    return client


def fingerprint_of(cert: x509.Certificate) -> str:
    return fingerprint_sha256(pem(cert))


# -- the policy ----------------------------------------------------------------------------


class PolicyUnitTests(SynchronousTestCase):
    """What the context is configured with, read back from OpenSSL."""

    def setUp(self) -> None:
        self.dir = make_tempdir(self)
        self.ca = CertAuthority()
        self.cert_path, self.key_path = self.ca.issue_server().write(self.dir, "server")

    def test_context_options(self) -> None:
        context = server_options(self.cert_path, self.key_path).getContext()
        options = context.set_options(0)  # adds nothing, returns what is set
        for flag in (
            SSL.OP_NO_SSLv3,
            SSL.OP_NO_TLSv1,
            SSL.OP_NO_TLSv1_1,
            SSL.OP_NO_COMPRESSION,
            SSL.OP_NO_RENEGOTIATION,
            SSL.OP_CIPHER_SERVER_PREFERENCE,
        ):
            self.assertTrue(options & flag, hex(flag))
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        self.assertFalse(options & SSL.OP_NO_TLSv1_3)
        self.assertFalse(options & SSL.OP_NO_TICKET)  # tickets on: resumption
        self.assertEqual(context.get_timeout(), 600)
        self.assertEqual(context.get_verify_mode(), SSL.VERIFY_NONE)

    def test_cipher_lists(self) -> None:
        def tls12_suites(legacy: bool) -> list[str]:
            options = server_options(self.cert_path, self.key_path, legacy_ciphers=legacy)
            names = SSL.Connection(options.getContext()).get_cipher_list()
            return [n for n in names if not n.startswith("TLS_")]  # TLS 1.3 suites apart

        modern = tls12_suites(False)
        self.assertTrue(modern)
        for name in modern:
            self.assertTrue(name.startswith("ECDHE-"), name)
            self.assertTrue("-GCM-" in name or "CHACHA20-POLY1305" in name, name)
        self.assertIn("ECDHE-ECDSA-AES128-GCM-SHA256", modern)
        self.assertIn("ECDHE-RSA-AES128-GCM-SHA256", modern)
        self.assertIn("ECDHE-RSA-CHACHA20-POLY1305", modern)
        # The old CPEs' suites come after every modern one, forward-secret first.
        self.assertEqual(
            tls12_suites(True),
            [
                *modern,
                "ECDHE-ECDSA-AES128-SHA",
                "ECDHE-RSA-AES128-SHA",
                "ECDHE-ECDSA-AES256-SHA",
                "ECDHE-RSA-AES256-SHA",
                "AES128-GCM-SHA256",
                "AES256-GCM-SHA384",
                "AES128-SHA",  # TLS_RSA_WITH_AES_128_CBC_SHA, TR-069's mandatory suite
                "AES256-SHA",
            ],
        )

    def test_legacy_with_ecdsa_certificate_warns(self) -> None:
        with capturedLogs() as events:
            server_options(self.cert_path, self.key_path, legacy_ciphers=True)
        warned = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["cert_path"], self.cert_path)
        rsa_cert, rsa_key = self.ca.issue_server(key_type="rsa").write(self.dir, "rsa")
        with capturedLogs() as events:
            server_options(rsa_cert, rsa_key, legacy_ciphers=True)
            server_options(
                self.cert_path, self.key_path, second_pair=(rsa_cert, rsa_key), legacy_ciphers=True
            )
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])

    def test_two_certificates_of_one_key_type_refused(self) -> None:
        # OpenSSL would silently serve only the second.
        other = self.ca.issue_server().write(self.dir, "other")
        e = self.assertRaises(
            ValueError, server_options, self.cert_path, self.key_path, second_pair=other
        )
        self.assertIn(other[0], str(e))
        self.assertIn("ECDSA", str(e))
        rsa_pair = self.ca.issue_server(key_type="rsa").write(self.dir, "rsa")
        self.assertRaises(ValueError, ReloadableServerTLS, *rsa_pair, second_pair=rsa_pair)


class TLSServerTests(TestCase):
    """A real Twisted TLS listener on 127.0.0.1:0 with server_options, and stdlib clients."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = make_tempdir(self)
        self.ca = CertAuthority()
        self.ca_path = self.ca.write(self.dir)

    async def test_self_signed_tls12_and_tls13_with_matching_fingerprint(self) -> None:
        (cert_path, key_path), _ = ensure_self_signed(self.dir)
        port, factory = await listen(self, server_options(cert_path, key_path))
        expected = fingerprint_sha256(read(cert_path))
        for version, name in [
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ]:
            seen = await deferToThread(converse, port, client_context(cert_path, version))
            self.assertEqual(seen["version"], name)
            self.assertEqual(seen["answer"], expected)
            self.assertEqual(fingerprint_of(seen["peer"]), expected)
        self.assertEqual(len(factory.handshakes), 2)

    async def test_tls10_and_tls11_clients_are_refused(self) -> None:
        # With both certificates and the legacy suites: none of them brings back TLS 1.0/1.1.
        cert_path, key_path = self.ca.issue_server().write(self.dir, "server")
        rsa_pair = self.ca.issue_server(key_type="rsa").write(self.dir, "rsa")
        options = server_options(cert_path, key_path, second_pair=rsa_pair, legacy_ciphers=True)
        port, factory = await listen(self, options)
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    ctx = client_context(self.ca_path, version, ciphers="DEFAULT:@SECLEVEL=0")
                except (ValueError, ssl.SSLError) as e:
                    raise SkipTest(f"local OpenSSL cannot configure a {version} client") from e
            seen = await deferToThread(converse, port, ctx)
            refused = seen.get("refused", "")
            if "NO_PROTOCOLS_AVAILABLE" in refused.upper():
                raise SkipTest(f"local OpenSSL refuses to offer {version}: {refused}")
            # The server's alert, not a client-side failure.
            self.assertIn("PROTOCOL_VERSION", refused.upper(), seen)
        self.assertEqual(factory.handshakes, [])
        self.assertEqual(factory.received, [])

    async def test_modern_tls12_client_gets_ecdhe_aead(self) -> None:
        cert_path, key_path = self.ca.issue_server().write(self.dir, "server")
        port, _ = await listen(self, server_options(cert_path, key_path))
        seen = await deferToThread(
            converse, port, client_context(self.ca_path, ssl.TLSVersion.TLSv1_2)
        )
        self.assertEqual(seen["version"], "TLSv1.2")
        self.assertRegex(seen["cipher"], r"^ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$")

    async def test_cbc_only_client_needs_legacy_ciphers_and_rsa(self) -> None:
        rsa_cert, rsa_key = self.ca.issue_server(key_type="rsa").write(self.dir, "rsa")
        ec_cert, ec_key = self.ca.issue_server().write(self.dir, "ec")
        cbc_only = client_context(
            self.ca_path,
            ssl.TLSVersion.TLSv1_2,
            ciphers="AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA"
            ":AES128-SHA256:ECDHE-RSA-AES128-SHA256",
        )
        mandatory_only = client_context(self.ca_path, ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA")
        modern = client_context(self.ca_path, ssl.TLSVersion.TLSv1_2)

        strict, strict_factory = await listen(self, server_options(rsa_cert, rsa_key))
        for client in (cbc_only, mandatory_only):
            seen = await deferToThread(converse, strict, client)
            self.assertIn("HANDSHAKE_FAILURE", seen.get("refused", "").upper(), seen)
        self.assertEqual(strict_factory.handshakes, [])

        legacy, _ = await listen(self, server_options(rsa_cert, rsa_key, legacy_ciphers=True))
        seen = await deferToThread(converse, legacy, mandatory_only)
        self.assertEqual(seen.get("cipher"), "AES128-SHA", seen)
        self.assertEqual(seen["version"], "TLSv1.2")
        # A CBC-only client that can do ECDHE keeps forward secrecy.
        seen = await deferToThread(converse, legacy, cbc_only)
        self.assertEqual(seen.get("cipher"), "ECDHE-RSA-AES128-SHA", seen)
        # Clients that can do better still get a forward-secret AEAD suite.
        seen = await deferToThread(converse, legacy, modern)
        self.assertRegex(seen["cipher"], r"^ECDHE-RSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$")

        with capturedLogs():  # the warning about the ECDSA certificate
            options = server_options(ec_cert, ec_key, legacy_ciphers=True)
        ecdsa, _ = await listen(self, options)
        seen = await deferToThread(converse, ecdsa, mandatory_only)
        self.assertIn("refused", seen)

    async def test_sessions_resume(self) -> None:
        cert_path, key_path = self.ca.issue_server().write(self.dir, "server")
        tls = ReloadableServerTLS(cert_path, key_path)
        port, factory = await listen(self, tls)
        tls12_ids = client_context(self.ca_path, ssl.TLSVersion.TLSv1_2)
        tls12_ids.options |= ssl.OP_NO_TICKET  # the server's session cache, not a ticket
        cases = {
            "TLS 1.3": client_context(self.ca_path, ssl.TLSVersion.TLSv1_3),
            "TLS 1.2 ticket": client_context(self.ca_path, ssl.TLSVersion.TLSv1_2),
            "TLS 1.2 session id": tls12_ids,
        }
        for name, ctx in cases.items():
            first = await open_client(self, port, ctx)
            await deferToThread(first.ask)  # TLS 1.3 tickets come after the handshake
            self.assertFalse(first.tls.session_reused, name)
            session = first.tls.session
            self.assertIsNotNone(session, name)
            second = await open_client(self, port, ctx, session)
            self.assertTrue(second.tls.session_reused, name)
            self.assertEqual(await deferToThread(second.ask), tls.fingerprint)

            # A reload means a new context: no resumption across it.
            self.assertTrue(tls.reload())
            third = await open_client(self, port, ctx, session)
            self.assertFalse(third.tls.session_reused, name)
        self.assertEqual(len(factory.handshakes), 9)

    async def test_chain_is_sent(self) -> None:
        intermediate = CertAuthority("cwmpgw Test Intermediate", parent=self.ca)
        leaf = intermediate.issue_server()
        cert_path, key_path = leaf.write(self.dir, "chain")
        port, _ = await listen(self, server_options(cert_path, key_path))

        # Trusting only the root, verification succeeds only if the server sent the intermediate.
        seen = await deferToThread(converse, port, client_context(self.ca_path))
        self.assertEqual(seen["peer"], leaf.cert)
        self.assertEqual(seen["answer"], fingerprint_of(leaf.cert))

        chain = await deferToThread(_peer_chain, port)
        self.assertEqual(chain, [leaf.cert, intermediate.cert])


class TwoCertificateTests(TestCase):
    """An ECDSA and an RSA certificate from one context: each client gets the one it can use."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = make_tempdir(self)

    async def test_generated_pair_serves_rsa_only_and_ecdsa_only_clients(self) -> None:
        (ec_cert, ec_key), rsa_pair = ensure_self_signed(self.dir)
        rsa_cert = rsa_pair[0]
        port, factory = await listen(self, server_options(ec_cert, ec_key, second_pair=rsa_pair))
        tls12 = ssl.TLSVersion.TLSv1_2
        cases = [
            # Each client verifies the certificate it gets against that certificate alone.
            (client_context(rsa_cert, tls12, ciphers="ECDHE-RSA-AES128-GCM-SHA256"), rsa_cert),
            (client_context(rsa_cert, tls12, ciphers="aRSA+AESGCM"), rsa_cert),
            (client_context(ec_cert, tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"), ec_cert),
            (client_context(ec_cert, tls12, ciphers="aECDSA"), ec_cert),
            (client_context(ec_cert, tls12), ec_cert),  # both offered: ECDSA, the cheaper
            (client_context(ec_cert), ec_cert),  # TLS 1.3
        ]
        for ctx, expected in cases:
            seen = await deferToThread(converse, port, ctx)
            self.assertNotIn("refused", seen)
            self.assertEqual(seen["peer"], x509.load_pem_x509_certificate(read(expected)))
            self.assertEqual(seen["answer"], fingerprint_sha256(read(expected)))
        self.assertEqual(len(factory.handshakes), len(cases))

    async def test_mandatory_suite_needs_legacy_ciphers(self) -> None:
        (ec_cert, ec_key), rsa_pair = ensure_self_signed(self.dir)
        rsa_cert = rsa_pair[0]
        mandatory = client_context(rsa_cert, ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA")

        strict, strict_factory = await listen(
            self, server_options(ec_cert, ec_key, second_pair=rsa_pair)
        )
        seen = await deferToThread(converse, strict, mandatory)
        self.assertIn("HANDSHAKE_FAILURE", seen.get("refused", "").upper(), seen)
        self.assertEqual(strict_factory.handshakes, [])

        options = server_options(ec_cert, ec_key, second_pair=rsa_pair, legacy_ciphers=True)
        legacy, _ = await listen(self, options)
        seen = await deferToThread(converse, legacy, mandatory)
        self.assertEqual((seen.get("version"), seen.get("cipher")), ("TLSv1.2", "AES128-SHA"))
        self.assertEqual(seen["peer"], x509.load_pem_x509_certificate(read(rsa_cert)))
        # Everyone else is unaffected by the legacy suites.
        seen = await deferToThread(
            converse, legacy, client_context(ec_cert, ssl.TLSVersion.TLSv1_2)
        )
        self.assertRegex(seen["cipher"], r"^ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$")

    async def test_configured_pairs_each_send_their_own_chain(self) -> None:
        ca = CertAuthority()
        ca_path = ca.write(self.dir)
        ec_leaf = CertAuthority("cwmpgw Test ECDSA Intermediate", parent=ca).issue_server()
        rsa_leaf = CertAuthority("cwmpgw Test RSA Intermediate", parent=ca).issue_server(
            key_type="rsa"
        )
        ec_pair, rsa_pair = ec_leaf.write(self.dir, "ec"), rsa_leaf.write(self.dir, "rsa")
        port, _ = await listen(self, server_options(*ec_pair, second_pair=rsa_pair))
        tls12 = ssl.TLSVersion.TLSv1_2
        # Trusting only the root: each verifies only if its own intermediate came with it.
        for ciphers, leaf in (("aRSA", rsa_leaf), ("aECDSA", ec_leaf)):
            seen = await deferToThread(
                converse, port, client_context(ca_path, tls12, ciphers=ciphers)
            )
            self.assertEqual(seen.get("peer"), leaf.cert, seen)
            chain = await deferToThread(_peer_chain, port, ciphers)
            self.assertEqual(chain, [leaf.cert, *leaf.chain])


def _peer_chain(port: int, ciphers: str | None = None) -> list[x509.Certificate]:
    """The certificates the server sent, as seen by a pyOpenSSL client (TLS 1.2 if ciphers)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if ciphers is not None:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(ciphers.encode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.settimeout(None)  # pyOpenSSL needs a blocking socket; the server always answers
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        conn.shutdown()
    return list(chain)


# -- reload --------------------------------------------------------------------------------


class ReloadTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = make_tempdir(self)
        self.ca = CertAuthority()
        self.ca_path = self.ca.write(self.dir)
        self.first = self.ca.issue_server()
        self.second = self.ca.issue_server()
        self.cert_path, self.key_path = self.first.write(self.dir, "acs")

    async def test_live_connection_keeps_its_context(self) -> None:
        tls = ReloadableServerTLS(self.cert_path, self.key_path)
        self.assertEqual(tls.fingerprint, fingerprint_of(self.first.cert))
        port, factory = await listen(self, tls)
        ctx = client_context(self.ca_path)
        old = await open_client(self, port, ctx)
        self.assertEqual(await deferToThread(old.ask), fingerprint_of(self.first.cert))

        self.second.write(self.dir, "acs")
        with capturedLogs() as events:
            self.assertTrue(tls.reload())
        self.assertEqual(tls.fingerprint, fingerprint_of(self.second.cert))
        self.assertIn(tls.fingerprint, [e.get("fingerprint") for e in events])

        new = await open_client(self, port, ctx)
        self.assertEqual(new.peer(), self.second.cert)
        self.assertEqual(await deferToThread(new.ask), fingerprint_of(self.second.cert))
        # The connection from before the reload still works, on the old context.
        self.assertEqual(await deferToThread(old.ask), fingerprint_of(self.first.cert))
        self.assertEqual(old.peer(), self.first.cert)
        self.assertEqual([h.local for h in factory.handshakes], [self.first.cert, self.second.cert])

    async def test_broken_files_keep_the_old_context(self) -> None:
        tls = ReloadableServerTLS(self.cert_path, self.key_path)
        port, _ = await listen(self, tls)
        before = tls.options
        garbage_key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        breakages: list[tuple[str, bytes]] = [
            (self.cert_path, b"not a certificate\n"),  # garbage
            (self.cert_path, self.second.cert_pem()),  # new certificate, old key (half-copied)
            (self.key_path, garbage_key),
        ]
        for path, data in breakages:
            self.first.write(self.dir, "acs")
            write(path, data)
            with capturedLogs() as events:
                self.assertFalse(tls.reload())
            self.assertIs(tls.options, before)
            self.assertEqual(tls.fingerprint, fingerprint_of(self.first.cert))
            errors = [e for e in events if e.get("log_level") == LogLevel.error]
            self.assertEqual(len(errors), 1)
            self.assertIn(path, errors[0]["why"])
            self.assertNotIn("AAAA", errors[0]["why"])
            seen = await deferToThread(converse, port, client_context(self.ca_path))
            self.assertEqual(seen["peer"], self.first.cert)
        os.unlink(self.key_path)
        with capturedLogs():
            self.assertFalse(tls.reload())
        self.assertIs(tls.options, before)

    def test_bad_files_at_start_raise(self) -> None:
        write(self.cert_path, b"nothing\n")
        e = self.assertRaises(ValueError, ReloadableServerTLS, self.cert_path, self.key_path)
        self.assertIn(self.cert_path, str(e))


# -- SIGHUP --------------------------------------------------------------------------------


class _QueueingReactor:
    """Just callFromThread, queueing: what the signal handler may touch."""

    def __init__(self) -> None:
        self.queued: list[Callable[[], None]] = []

    def callFromThread(self, f: Callable[[], None]) -> None:
        self.queued.append(f)


class SighupUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        original = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, original)
        self.previous: list[int] = []
        signal.signal(signal.SIGHUP, lambda signum, frame: self.previous.append(signum))

    def test_queues_callback_and_chains(self) -> None:
        reactor = _QueueingReactor()
        calls: list[str] = []
        uninstall = install_sighup(reactor, lambda: calls.append("reload"))
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(self.previous, [signal.SIGHUP])
        self.assertEqual(calls, [])  # not inside the signal handler
        self.assertEqual(len(reactor.queued), 1)
        reactor.queued.pop()()
        self.assertEqual(calls, ["reload"])

        previous = signal.getsignal(signal.SIGHUP)
        uninstall()
        self.assertIsNot(signal.getsignal(signal.SIGHUP), previous)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(self.previous, [signal.SIGHUP, signal.SIGHUP])
        self.assertEqual(reactor.queued, [])

    def test_uninstall_under_another_handler_leaves_ours_inert(self) -> None:
        reactor = _QueueingReactor()
        uninstall = install_sighup(reactor, lambda: None)
        ours = signal.getsignal(signal.SIGHUP)
        assert callable(ours)
        later: list[int] = []

        def on_top(signum: int, frame: FrameType | None) -> None:
            later.append(signum)
            assert callable(ours)
            ours(signum, frame)

        signal.signal(signal.SIGHUP, on_top)
        uninstall()
        self.assertIs(signal.getsignal(signal.SIGHUP), on_top)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(later, [signal.SIGHUP])
        self.assertEqual(self.previous, [signal.SIGHUP])  # still chained through ours
        self.assertEqual(reactor.queued, [])

    def test_failing_callback_is_logged(self) -> None:
        reactor = _QueueingReactor()

        def boom() -> None:
            raise RuntimeError("boom")

        uninstall = install_sighup(reactor, boom)
        self.addCleanup(uninstall)
        os.kill(os.getpid(), signal.SIGHUP)
        with capturedLogs() as events:
            reactor.queued.pop()()  # does not raise: the reactor would only log it, less clearly
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([e["log_format"] for e in events], ["SIGHUP handler failed"])


class SighupReloadTests(TestCase):
    """The whole path: a real SIGHUP reloads a live listener on the reactor thread."""

    timeout = 30

    async def test_sighup_reloads(self) -> None:
        from twisted.internet import reactor

        original = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, original)
        data_dir = make_tempdir(self)
        ca = CertAuthority()
        first, second = ca.issue_server(), ca.issue_server()
        cert_path, key_path = first.write(data_dir, "acs")
        tls = ReloadableServerTLS(cert_path, key_path)
        port, _ = await listen(self, tls)

        reloaded: Deferred[tuple[bool, bool]] = Deferred()

        def on_sighup() -> None:
            in_reactor_thread = threading.current_thread() is threading.main_thread()
            with capturedLogs():
                reloaded.callback((tls.reload(), in_reactor_thread))

        self.addCleanup(install_sighup(reactor, on_sighup))
        second.write(data_dir, "acs")
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertFalse(reloaded.called)  # queued for the reactor, not run in the handler
        self.assertEqual(await reloaded, (True, True))
        seen = await deferToThread(converse, port, client_context(ca.write(data_dir)))
        self.assertEqual(seen["peer"], second.cert)

    async def test_sighup_reloads_both_certificates(self) -> None:
        from twisted.internet import reactor

        original = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, original)
        data_dir = make_tempdir(self)
        ca = CertAuthority()
        ca_path = ca.write(data_dir)
        old_ec, old_rsa = ca.issue_server(), ca.issue_server(key_type="rsa")
        ec_pair, rsa_pair = old_ec.write(data_dir, "ec"), old_rsa.write(data_dir, "rsa")
        tls = ReloadableServerTLS(*ec_pair, second_pair=rsa_pair)
        self.assertEqual(
            tls.fingerprints, (fingerprint_of(old_ec.cert), fingerprint_of(old_rsa.cert))
        )
        port, _ = await listen(self, tls)

        reloaded: Deferred[bool] = Deferred()
        events: list[dict[str, Any]] = []

        def on_sighup() -> None:
            with capturedLogs() as captured:
                done = tls.reload()
            events.extend(captured)
            reloaded.callback(done)

        self.addCleanup(install_sighup(reactor, on_sighup))
        new_ec, new_rsa = ca.issue_server(), ca.issue_server(key_type="rsa")
        new_ec.write(data_dir, "ec")
        new_rsa.write(data_dir, "rsa")
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertTrue(await reloaded)
        new = (fingerprint_of(new_ec.cert), fingerprint_of(new_rsa.cert))
        self.assertEqual(tls.fingerprints, new)
        [event] = events
        self.assertEqual(event["fingerprints"], list(new))
        tls12 = ssl.TLSVersion.TLSv1_2
        for ciphers, leaf in (("aECDSA", new_ec), ("aRSA", new_rsa)):
            seen = await deferToThread(
                converse, port, client_context(ca_path, tls12, ciphers=ciphers)
            )
            self.assertEqual(seen["peer"], leaf.cert)
