"""Server-side TLS for the ACS: policy, client certificates, reload, a first-run certificate.

CPEs expect HTTPS from the first boot, so a fresh install makes its own ECDSA P-256 certificate
(the cheaper handshake on our hot path) and keeps it; an operator replaces the two PEM files with
real ones and the same loader serves the whole chain. The policy follows TR-069's pointer to
RFC 7525 (see :func:`server_options`); devices may prove who they are with client certificates
(what those certificates say is read by :mod:`cwmpgw.acs.certs`). Certificates expire and get
replaced, so :class:`ReloadableServerTLS` swaps them in on SIGHUP without touching live sessions.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

__all__ = [
    "CLIENT_CERT_MODES",
    "ReloadableServerTLS",
    "ensure_self_signed",
    "fingerprint_sha256",
    "install_sighup",
    "server_options",
]

_log = Logger()

CERT_FILE = "acs-cert.pem"
KEY_FILE = "acs-key.pem"
_VALIDITY = datetime.timedelta(days=3650)
_BACKDATE = datetime.timedelta(days=1)

CLIENT_CERT_MODES: Final = ("off", "optional", "required")
# TLS 1.2: forward secret and AEAD only (RFC 7525 §4.2; Mozilla "intermediate" without DHE).
# TLS 1.3 suites are a separate OpenSSL list, left at its defaults (all AEAD).
_MODERN_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
# TLS_RSA_WITH_AES_128_CBC_SHA in OpenSSL's naming: TR-069's mandatory TLS 1.2 suite.
_LEGACY_CIPHER: Final = "AES128-SHA"
# Seconds a session stays resumable, from the cache or a ticket. Ticket keys live as long as
# the context (until a reload), so keep it short (RFC 7525 §3.4): it is meant for the
# reconnects within one CWMP session, not for the next periodic inform hours later.
_SESSION_LIFETIME: Final = 600


def ensure_self_signed(data_dir: str, hostname: str = "localhost") -> tuple[str, str, bool]:
    """Return (cert_path, key_path, created), generating the pair under data_dir/tls once.

    An existing pair is reused untouched, so the fingerprint CPEs may have pinned stays stable.
    """
    tls_dir = os.path.join(data_dir, "tls")
    cert_path = os.path.join(tls_dir, CERT_FILE)
    key_path = os.path.join(tls_dir, KEY_FILE)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False

    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_certificate(key, hostname)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    # Key first: a crash in between leaves no certificate, so the next start makes a new pair.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    _log.info(
        "Generated a self-signed TLS certificate for {hostname} at {cert_path} "
        "(SHA-256 {fingerprint})",
        hostname=hostname,
        cert_path=cert_path,
        fingerprint=fingerprint_sha256(cert_pem),
    )
    return cert_path, key_path, True


def fingerprint_sha256(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint ("AB:CD:…") of the first certificate in cert_pem."""
    return _fingerprint(x509.load_pem_x509_certificate(cert_pem))


def server_options(
    cert_path: str,
    key_path: str,
    *,
    client_certs: str = "off",
    ca_file: str | None = None,
    legacy_ciphers: bool = False,
) -> CertificateOptions:
    """The ACS's TLS server policy, from a PEM key and a PEM chain (leaf first, then intermediates).

    RFC 7525 as TR-069 asks: TLS 1.2 and 1.3 only (1.0/1.1 refused); TLS 1.2 with ECDHE and
    AES-GCM or ChaCha20-Poly1305 only (forward secret, AEAD), TLS 1.3 with OpenSSL's suites (all
    AEAD); the server's order wins; no compression; no renegotiation. Sessions resume from a
    server-side cache and from tickets, so a CPE reconnecting within minutes skips the full
    handshake (only with this process: neither is shared between gateway nodes).

    ``client_certs``: "off" asks for no certificate; "optional" asks, lets a client send none,
    but fails the handshake on one that does not verify against ``ca_file``; "required" fails
    the handshake of any client without a valid one, so it never reaches HTTP. ``ca_file``
    holds the trusted root(s) in PEM, optionally with intermediates; a client's chain must end
    at one of those roots (an intermediate alone is not a trust anchor here).

    ``legacy_ciphers`` adds TLS_RSA_WITH_AES_128_CBC_SHA, the one TLS 1.2 suite TR-069 makes
    mandatory for CPEs, for old ones that offer nothing better. It is off by default because
    it trades away security for every client that needs it: no forward secrecy (whoever later
    gets the server's RSA key decrypts every recorded session), CBC with MAC-then-encrypt (the
    padding-oracle family, Lucky 13) and a SHA-1 MAC. Modern clients are unaffected: it comes
    last in the server's order. It needs an RSA certificate (RSA key exchange); with an ECDSA
    one it is never negotiated, and a warning says so.

    Everything is loaded and checked now, so a bad file stops startup with a message naming it
    rather than failing the first handshake.
    """
    options, _ = _build_options(cert_path, key_path, client_certs, ca_file, legacy_ciphers)
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Server TLS whose certificate, key and client CAs can be replaced while it runs.

    Give it to ``SSL4ServerEndpoint`` in place of the options. Each new connection takes the
    current context; a connection keeps the context it was made with for its whole life (an
    OpenSSL connection holds its own reference), so a reload never disturbs a live session.
    """

    _log = Logger()

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        *,
        client_certs: str = "off",
        ca_file: str | None = None,
        legacy_ciphers: bool = False,
    ) -> None:
        """Loads everything now: a bad file raises ValueError, as server_options does."""
        self._settings = (cert_path, key_path, client_certs, ca_file, legacy_ciphers)
        self._options, leaf = _build_options(*self._settings)
        self._fingerprint = _fingerprint(leaf)

    @property
    def options(self) -> CertificateOptions:
        """The options new connections get."""
        return self._options

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the certificate new connections get."""
        return self._fingerprint

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> bool:
        """Re-read the files and swap the new context in; on any problem keep the old one.

        Returns whether the new files are in use. A new context also means new session-ticket
        keys and an empty session cache: sessions from before the reload get a full handshake,
        which is what a changed CA must mean anyway.
        """
        cert_path = self._settings[0]
        try:
            options, leaf = _build_options(*self._settings)
        except ValueError as e:
            self._log.error(
                "TLS reload failed, still serving the certificate {fingerprint}: {why}",
                fingerprint=self._fingerprint,
                why=str(e),
            )
            return False
        except Exception:
            self._log.failure(
                "TLS reload failed, still serving the certificate {fingerprint}",
                fingerprint=self._fingerprint,
            )
            return False
        self._options = options
        self._fingerprint = _fingerprint(leaf)
        self._log.info(
            "TLS reloaded from {cert_path}: certificate SHA-256 {fingerprint}",
            cert_path=cert_path,
            fingerprint=self._fingerprint,
        )
        return True


def install_sighup(reactor: Any, callback: Callable[[], object]) -> Callable[[], None]:
    """Run callback on the reactor thread at each SIGHUP; return a function that undoes it.

    A signal handler may run between any two bytecodes of the main thread, in the middle of
    the reactor's own work, so it only queues the callback (``callFromThread`` is safe there
    and wakes the reactor). A handler installed before is called too, and comes back on
    uninstall. Must be called from the main thread, like ``signal.signal``.
    """
    previous = signal.getsignal(signal.SIGHUP)
    active = True

    def run() -> None:
        try:
            callback()
        except Exception:
            _log.failure("SIGHUP handler failed")

    def handler(signum: int, frame: FrameType | None) -> None:
        if active:
            reactor.callFromThread(run)
        if callable(previous):
            previous(signum, frame)

    def uninstall() -> None:
        nonlocal active
        active = False
        # If someone installed a handler over ours, ours stays in their chain, now inert.
        if signal.getsignal(signal.SIGHUP) is handler:
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)

    signal.signal(signal.SIGHUP, handler)
    return uninstall


def _build_options(
    cert_path: str,
    key_path: str,
    client_certs: str,
    ca_file: str | None,
    legacy_ciphers: bool,
) -> tuple[CertificateOptions, x509.Certificate]:
    """The options and the leaf certificate they serve; ValueError naming the file if unusable."""
    if client_certs not in CLIENT_CERT_MODES:
        raise ValueError(
            f"client_certs must be one of {', '.join(CLIENT_CERT_MODES)}, not {client_certs!r}"
        )
    if client_certs != "off" and not ca_file:
        raise ValueError(f"client_certs = {client_certs!r} needs a ca_file to verify them with")
    chain, key = _load_pair(cert_path, key_path)
    client_cas = _load_cas(ca_file) if client_certs != "off" and ca_file else []
    verification: dict[str, Any] = {}
    if client_certs == "required":
        verification["trustRoot"] = trustRootFromCertificates(
            [Certificate(X509.from_cryptography(ca)) for ca in client_cas]
        )
    elif client_certs == "optional":
        # trustRoot always requires a certificate; only the older arguments can make it optional.
        verification.update(
            verify=True,
            caCerts=[X509.from_cryptography(ca) for ca in client_cas],
            requireCertificate=False,
        )
    ciphers = _MODERN_CIPHERS
    if legacy_ciphers:
        ciphers += ":" + _LEGACY_CIPHER
        if not isinstance(key, rsa.RSAPrivateKey):
            _log.warn(
                "legacy_ciphers is on but {cert_path} is not an RSA certificate: "
                "TLS_RSA_WITH_AES_128_CBC_SHA cannot be negotiated with it",
                cert_path=cert_path,
            )
    # pyOpenSSL takes cryptography objects directly (its own X509/PKey wrappers are deprecated);
    # Twisted only stores them and hands them to the Context, whatever its annotations say.
    private_key: Any = key
    leaf_cert: Any = chain[0]
    extra: list[Any] = chain[1:]
    try:
        options = CertificateOptions(
            privateKey=private_key,
            certificate=leaf_cert,
            extraCertChain=extra,
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(ciphers),
            enableSessions=True,
            enableSessionTickets=True,
            **verification,
        )
        # getContext() builds and caches the context every connection is made from: OpenSSL's
        # own checks run now, and what CertificateOptions has no argument for is set on it
        # before any connection exists (pyOpenSSL freezes a context after its first one).
        context = options.getContext()
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        context.set_timeout(_SESSION_LIFETIME)
        for ca in client_cas:
            context.add_client_ca(ca)  # named in the request, for CPEs holding several
    except (ValueError, TypeError, SSL.Error) as e:
        raise ValueError(f"cannot use {cert_path} with {key_path}: {type(e).__name__}") from None
    return options, chain[0]


def _load_pair(cert_path: str, key_path: str) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    chain_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ValueError(f"{cert_path}: no valid PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Never chain the parser's exception: keep anything derived from key bytes out of logs.
        raise ValueError(
            f"{key_path}: not an unencrypted PEM private key of a supported type"
        ) from None
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise ValueError(f"{key_path}: private key does not match the certificate in {cert_path}")
    return chain, key


def _load_cas(ca_file: str) -> list[x509.Certificate]:
    data = _read(ca_file, "CA certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{ca_file}: no valid PEM CA certificate found") from None


def _fingerprint(cert: x509.Certificate) -> str:
    digest = cert.fingerprint(hashes.SHA256()).hex()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def _self_signed_certificate(key: ec.EllipticCurvePrivateKey, hostname: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    names: list[x509.GeneralName] = []
    for dns_or_ip in (hostname, "localhost", "127.0.0.1", "::1"):
        general = _general_name(dns_or_ip)
        if general not in names:
            names.append(general)
    now = datetime.datetime.now(datetime.UTC)
    signer: CertificateIssuerPrivateKeyTypes = key
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


def _general_name(dns_or_ip: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(dns_or_ip))
    except ValueError:
        return x509.DNSName(dns_or_ip)


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read TLS {what} file {path}: {e.strerror}") from None


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pem")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
