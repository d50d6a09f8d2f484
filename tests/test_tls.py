"""The ACS's server TLS: self-signed bootstrap certificate, loading, and real handshakes."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import tempfile
import warnings
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from cwmpgw.acs.tls import ensure_self_signed, fingerprint_sha256, server_options


def make_tempdir(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="cwmpgw-tls-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def snapshot(path: str) -> tuple[bytes, int, int]:
    st = os.stat(path)
    return read(path), st.st_ino, st.st_mtime_ns


class SelfSignedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = make_tempdir(self)

    def test_generates_ec_p256_pair_with_private_key_file(self) -> None:
        cert_path, key_path, created = ensure_self_signed(self.data_dir)
        self.assertTrue(created)
        tls_dir = os.path.join(self.data_dir, "tls")
        self.assertEqual(cert_path, os.path.join(tls_dir, "acs-cert.pem"))
        self.assertEqual(key_path, os.path.join(tls_dir, "acs-key.pem"))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(tls_dir)), ["acs-cert.pem", "acs-key.pem"])

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
        cert_path, _, _ = ensure_self_signed(self.data_dir, "acs.example.net")
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
        cert_path, _, _ = ensure_self_signed(self.data_dir, "192.0.2.10")
        cert = x509.load_pem_x509_certificate(read(cert_path))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(ipaddress.ip_address("192.0.2.10"), san.get_values_for_type(x509.IPAddress))
        self.assertNotIn("192.0.2.10", san.get_values_for_type(x509.DNSName))

    def test_reuse_leaves_files_untouched(self) -> None:
        cert_path, key_path, _ = ensure_self_signed(self.data_dir)
        before = [
            (read(p), os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (cert_path, key_path)
        ]
        fingerprint = fingerprint_sha256(read(cert_path))
        again = ensure_self_signed(self.data_dir)
        self.assertEqual(again, (cert_path, key_path, False))
        after = [
            (read(p), os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (cert_path, key_path)
        ]
        self.assertEqual(before, after)
        self.assertEqual(fingerprint_sha256(read(cert_path)), fingerprint)

    def test_missing_certificate_regenerates_pair(self) -> None:
        cert_path, key_path, _ = ensure_self_signed(self.data_dir)
        old_key = read(key_path)
        os.unlink(cert_path)
        _, _, created = ensure_self_signed(self.data_dir)
        self.assertTrue(created)
        self.assertNotEqual(read(key_path), old_key)
        server_options(cert_path, key_path)  # the new pair matches

    def test_fingerprint_format(self) -> None:
        cert_path, _, _ = ensure_self_signed(self.data_dir)
        pem = read(cert_path)
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        expected = hashlib.sha256(der).hexdigest().upper()
        fingerprint = fingerprint_sha256(pem)
        self.assertEqual(fingerprint.replace(":", ""), expected)
        self.assertEqual(len(fingerprint.split(":")), 32)
        self.assertRegex(fingerprint, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


class ServerOptionsErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = make_tempdir(self)
        self.cert_path, self.key_path, _ = ensure_self_signed(self.data_dir)

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
        _, other_key, _ = ensure_self_signed(other_dir)
        e = self.assertRaises(ValueError, server_options, self.cert_path, other_key)
        message = str(e)
        self.assertIn(other_key, message)
        self.assertIn(self.cert_path, message)
        self.assertNotIn("PRIVATE KEY", message)
        self.assertIsNone(e.__cause__)


class _Hello(Protocol):
    """Says hello and closes; reports its end so tests leave a clean reactor."""

    def __init__(self, lost: Deferred[None]) -> None:
        self.lost = lost

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(None)


class _HelloFactory(Factory):
    def __init__(self) -> None:
        self.lost: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> _Hello:
        d: Deferred[None] = Deferred()
        self.lost.append(d)
        return _Hello(d)


def _client_context(cafile: str | None, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def _handshake(
    port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> dict[str, Any]:
    """Blocking client, run in a thread: handshake, read until EOF, report what it saw."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
            data = b""
            while chunk := tls.recv(1024):
                data += chunk
    return {"version": version, "der": der, "data": data}


class TLSServerTests(TestCase):
    """A real Twisted TLS listener on 127.0.0.1:0 with server_options, and stdlib clients."""

    timeout = 30

    async def listen(self, cert_path: str, key_path: str) -> tuple[int, _HelloFactory]:
        from twisted.internet import reactor
        from twisted.internet.endpoints import SSL4ServerEndpoint

        factory = _HelloFactory()
        endpoint = SSL4ServerEndpoint(
            reactor, 0, server_options(cert_path, key_path), interface="127.0.0.1"
        )
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        # Cleanups run last-in first-out: wait for every server-side connection to close.
        self.addCleanup(lambda: gatherResults(factory.lost))
        return port.getHost().port, factory

    async def test_tls12_and_tls13_with_matching_fingerprint(self) -> None:
        cert_path, key_path, _ = ensure_self_signed(make_tempdir(self))
        port, _ = await self.listen(cert_path, key_path)
        expected = fingerprint_sha256(read(cert_path))
        for version, name in [
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ]:
            seen = await deferToThread(_handshake, port, _client_context(cert_path, version))
            self.assertEqual(seen["version"], name)
            self.assertEqual(seen["data"], b"hello")
            der_pem = ssl.DER_cert_to_PEM_cert(seen["der"]).encode("ascii")
            self.assertEqual(fingerprint_sha256(der_pem), expected)

    async def test_tls11_client_is_refused(self) -> None:
        cert_path, key_path, _ = ensure_self_signed(make_tempdir(self))
        port, _ = await self.listen(cert_path, key_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = _client_context(None)
            try:
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            except (ValueError, ssl.SSLError) as e:
                raise SkipTest(f"local OpenSSL cannot configure a TLS 1.1 client: {e}") from e
        try:
            seen = await deferToThread(_handshake, port, ctx)
        except ssl.SSLError as e:
            if "NO_PROTOCOLS_AVAILABLE" in str(e).upper():
                raise SkipTest(f"local OpenSSL refuses to offer TLS 1.1 at all: {e}") from e
            return  # the server refused the handshake: expected
        except ConnectionError:
            return  # refused with a reset: expected too
        self.fail(f"a TLS 1.1 client completed a handshake: {seen['version']}")

    async def test_chain_is_sent(self) -> None:
        data_dir = make_tempdir(self)
        root_key, root = _ca("Test Root", None, None)
        inter_key, inter = _ca("Test Intermediate", root_key, root)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _signed(
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .public_key(leaf_key.public_key())
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            ),
            inter_key,
            inter.subject,
        )
        cert_path = os.path.join(data_dir, "chain.pem")
        key_path = os.path.join(data_dir, "key.pem")
        root_path = os.path.join(data_dir, "root.pem")
        write(cert_path, _pem(leaf) + _pem(inter))
        write(root_path, _pem(root))
        write(
            key_path,
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        port, _ = await self.listen(cert_path, key_path)

        # Trusting only the root, verification succeeds only if the server sent the intermediate.
        seen = await deferToThread(_handshake, port, _client_context(root_path))
        self.assertEqual(seen["data"], b"hello")
        self.assertEqual(x509.load_der_x509_certificate(seen["der"]), leaf)

        chain = await deferToThread(_peer_chain, port)
        self.assertEqual(chain, [leaf, inter])


def _peer_chain(port: int) -> list[x509.Certificate]:
    """The certificates the server sent, as seen by a pyOpenSSL client."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.settimeout(None)  # pyOpenSSL needs a blocking socket; the server always answers
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        try:
            while conn.recv(1024):
                pass
        except SSL.ZeroReturnError:
            pass
        conn.shutdown()
    return list(chain)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _signed(
    builder: x509.CertificateBuilder,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.issuer_name(issuer_name)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(issuer_key, hashes.SHA256())
    )


def _ca(
    cn: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Certificate | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    issuer_name = issuer.subject if issuer is not None else _name(cn)
    return key, _signed(builder, issuer_key or key, issuer_name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
