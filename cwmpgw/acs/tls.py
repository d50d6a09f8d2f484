"""Server-side TLS for the ACS: policy, client certificates, reload, first-run certificates.

CPEs expect HTTPS from the first boot, so a fresh install makes its own certificates and keeps
them: ECDSA P-256 (the cheaper handshake on our hot path) and RSA beside it, because many CPEs
only speak RSA-authenticated suites and TR-069's one mandatory suite is RSA key exchange. One
context serves both; OpenSSL gives each client the one its suites and signature algorithms
allow. An operator replaces them with real ones (one pair or an RSA and an ECDSA pair) and the
same loader serves each whole chain. The policy follows TR-069's pointer to RFC 7525 (see
:func:`server_options`); devices may prove who they are with client certificates (what those
certificates say is read by :mod:`cwmpgw.acs.certs`). Certificates expire and get replaced, so
:class:`ReloadableServerTLS` swaps them in on SIGHUP without touching live sessions.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
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
    "Pair",
    "ReloadableServerTLS",
    "describe_certificates",
    "ensure_self_signed",
    "fingerprint_sha256",
    "install_sighup",
    "server_options",
]

_log = Logger()

CERT_FILE = "acs-cert.pem"
KEY_FILE = "acs-key.pem"
RSA_CERT_FILE = "acs-rsa-cert.pem"
RSA_KEY_FILE = "acs-rsa-key.pem"
# 2048 bits: the RSA certificate is there for old CPEs, whose TLS stacks may go no further.
_RSA_BITS: Final = 2048
_VALIDITY = datetime.timedelta(days=3650)
_BACKDATE = datetime.timedelta(days=1)

CLIENT_CERT_MODES: Final = ("off", "optional", "required")
# TLS 1.2: forward secret and AEAD only (RFC 7525 §4.2; Mozilla "intermediate" without DHE),
# with an ECDSA or an RSA certificate, whichever the client can verify.
# TLS 1.3 suites are a separate OpenSSL list, left at its defaults (all AEAD).
_MODERN_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
# For old CPEs only, after every modern suite: first what still has forward secrecy (ECDHE with
# CBC), then RSA key exchange, with TLS_RSA_WITH_AES_128_CBC_SHA ("AES128-SHA"), TR-069's
# mandatory TLS 1.2 suite. No 3DES (Sweet32), no DHE (slow, weak groups in old clients).
_LEGACY_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
    ":AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA"
)
# Seconds a session stays resumable, from the cache or a ticket. Ticket keys live as long as
# the context (until a reload), so keep it short (RFC 7525 §3.4): it is meant for the
# reconnects within one CWMP session, not for the next periodic inform hours later.
_SESSION_LIFETIME: Final = 600

Pair = tuple[str, str]
"""(certificate chain PEM path, private key PEM path)."""


def ensure_self_signed(data_dir: str, hostname: str = "localhost") -> tuple[Pair, Pair]:
    """The ECDSA and the RSA pair under data_dir/tls, each generated when it is needed.

    A pair is (re)generated when it is missing or unusable, or when the names in its
    certificate (its subjectAltName) are not those ``hostname`` gives: a changed ``acs.hostname``
    gets certificates that name it, and one line logs the new fingerprints. A pair made for the
    same names is reused untouched, so the fingerprint CPEs may have pinned stays stable.

    A certificate there that is not self-signed was not made here: it is never overwritten, and
    if its names are wrong, ValueError says what to do.
    """
    tls_dir = os.path.join(data_dir, "tls")
    names = _certificate_names(hostname)
    pairs = {
        "ECDSA": (os.path.join(tls_dir, CERT_FILE), os.path.join(tls_dir, KEY_FILE)),
        "RSA": (os.path.join(tls_dir, RSA_CERT_FILE), os.path.join(tls_dir, RSA_KEY_FILE)),
    }
    # Both looked at before anything is written: a refusal leaves every file as it was.
    existing = {kind: _generated_names(kind, *pair) for kind, pair in pairs.items()}
    made: dict[str, str] = {}
    replaced: list[x509.GeneralName] = []
    for kind, (cert_path, key_path) in pairs.items():
        old_names = existing[kind]
        if old_names is not None and set(old_names) == set(names):
            continue
        if old_names is not None:
            replaced.extend(n for n in old_names if n not in replaced)
        os.makedirs(tls_dir, mode=0o700, exist_ok=True)
        made[kind] = _generate(kind, cert_path, key_path, hostname, names)
    if made:
        if replaced:
            reason = "the old one named " + ", ".join(_name_text(n) for n in replaced)
        else:
            reason = "none there, or not usable"
        _log.info(
            "Generated a self-signed TLS certificate for {hostname} in {tls_dir} ({reason}): "
            "{fingerprints}",
            hostname=hostname,
            tls_dir=tls_dir,
            reason=reason,
            fingerprints=", ".join(f"{kind} SHA-256 {fp}" for kind, fp in made.items()),
            ecdsa_fingerprint=made.get("ECDSA"),
            rsa_fingerprint=made.get("RSA"),
        )
    return pairs["ECDSA"], pairs["RSA"]


def fingerprint_sha256(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint ("AB:CD:…") of the first certificate in cert_pem."""
    return _fingerprint(x509.load_pem_x509_certificate(cert_pem))


def describe_certificates(
    pairs: Sequence[Pair], leaves: Sequence[x509.Certificate] | None = None
) -> str:
    """For logs: "ECDSA AB:CD:… (path), RSA … (path)": SHA-256 fingerprints, one per pair.

    ``leaves`` are the pairs' certificates if already loaded; else the files are read
    (ValueError naming a file that cannot be).
    """
    if leaves is None:
        leaves = []
        for cert_path, _ in pairs:
            try:
                leaves.append(x509.load_pem_x509_certificate(_read(cert_path, "certificate")))
            except ValueError as e:
                raise ValueError(f"{cert_path}: {e}") from None
    return ", ".join(
        f"{_public_kind(leaf.public_key())} {_fingerprint(leaf)} ({cert_path})"
        for (cert_path, _), leaf in zip(pairs, leaves, strict=True)
    )


def server_options(
    cert_path: str,
    key_path: str,
    *,
    second_pair: Pair | None = None,
    client_certs: str = "off",
    ca_file: str | None = None,
    legacy_ciphers: bool = False,
) -> CertificateOptions:
    """The ACS's TLS server policy, from a PEM key and a PEM chain (leaf first, then intermediates).

    ``second_pair`` is another (cert_path, key_path) of the other key type, served from the
    same context: with an ECDSA and an RSA certificate, a client that offers only
    RSA-authenticated suites (or, in TLS 1.3, only RSA signature algorithms) gets the RSA one,
    every other client the ECDSA one. Each keeps its own chain. Two certificates of one key type
    are refused: OpenSSL holds one per type, and the second would silently replace the first.

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

    ``legacy_ciphers`` adds, after every modern suite, TLS_RSA_WITH_AES_128_CBC_SHA (the one
    TLS 1.2 suite TR-069 makes mandatory for CPEs) and its kin: ECDHE with AES-CBC-SHA, and RSA
    key exchange with AES-GCM and AES-256-CBC-SHA, for old CPEs that offer nothing better. It is
    off by default because it trades away security for every client that needs it: no forward
    secrecy with RSA key exchange (whoever later gets the server's RSA key decrypts every
    recorded session), CBC with MAC-then-encrypt (the padding-oracle family, Lucky 13) and a
    SHA-1 MAC. Modern clients are unaffected: these come last in the server's order. RSA key
    exchange needs an RSA certificate; without one a warning says so.

    Everything is loaded and checked now, so a bad file stops startup with a message naming it
    rather than failing the first handshake.
    """
    pairs = [(cert_path, key_path), *([second_pair] if second_pair else [])]
    options, _ = _build_options(pairs, client_certs, ca_file, legacy_ciphers)
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Server TLS whose certificates, keys and client CAs can be replaced while it runs.

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
        second_pair: Pair | None = None,
        client_certs: str = "off",
        ca_file: str | None = None,
        legacy_ciphers: bool = False,
    ) -> None:
        """Loads everything now: a bad file raises ValueError, as server_options does."""
        pairs = [(cert_path, key_path), *([second_pair] if second_pair else [])]
        self._settings = (pairs, client_certs, ca_file, legacy_ciphers)
        self._options, leaves = _build_options(*self._settings)
        self._fingerprints = tuple(_fingerprint(leaf) for leaf in leaves)

    @property
    def options(self) -> CertificateOptions:
        """The options new connections get."""
        return self._options

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the (first) certificate new connections get."""
        return self._fingerprints[0]

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """SHA-256 fingerprints of the certificates new connections get, one per pair."""
        return self._fingerprints

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> bool:
        """Re-read the files and swap the new context in; on any problem keep the old one.

        Returns whether the new files are in use. A new context also means new session-ticket
        keys and an empty session cache: sessions from before the reload get a full handshake,
        which is what a changed CA must mean anyway.
        """
        pairs = self._settings[0]
        try:
            options, leaves = _build_options(*self._settings)
        except ValueError as e:
            self._log.error(
                "TLS reload failed, still serving SHA-256 {certificates}: {why}",
                certificates=", ".join(self._fingerprints),
                fingerprint=self._fingerprints[0],
                fingerprints=list(self._fingerprints),
                why=str(e),
            )
            return False
        except Exception:
            self._log.failure(
                "TLS reload failed, still serving SHA-256 {certificates}",
                certificates=", ".join(self._fingerprints),
                fingerprint=self._fingerprints[0],
                fingerprints=list(self._fingerprints),
            )
            return False
        self._options = options
        self._fingerprints = tuple(_fingerprint(leaf) for leaf in leaves)
        self._log.info(
            "TLS reloaded, certificate SHA-256 fingerprints: {certificates}",
            certificates=describe_certificates(pairs, leaves),
            cert_path=pairs[0][0],
            fingerprint=self._fingerprints[0],
            fingerprints=list(self._fingerprints),
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
    pairs: Sequence[Pair],
    client_certs: str,
    ca_file: str | None,
    legacy_ciphers: bool,
) -> tuple[CertificateOptions, list[x509.Certificate]]:
    """The options and the leaf certificates they serve; ValueError naming the file if unusable."""
    if client_certs not in CLIENT_CERT_MODES:
        raise ValueError(
            f"client_certs must be one of {', '.join(CLIENT_CERT_MODES)}, not {client_certs!r}"
        )
    if client_certs != "off" and not ca_file:
        raise ValueError(f"client_certs = {client_certs!r} needs a ca_file to verify them with")
    loaded = [_load_pair(cert_path, key_path) for cert_path, key_path in pairs]
    kinds: dict[str, str] = {}
    for (cert_path, _), (_, key) in zip(pairs, loaded, strict=True):
        kind = _kind(key)
        if kind in kinds:
            raise ValueError(
                f"{cert_path}: a second {kind} certificate (after {kinds[kind]}); one context "
                "serves one certificate per key type: pair an RSA one with an ECDSA one"
            )
        kinds[kind] = cert_path
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
        ciphers += ":" + _LEGACY_CIPHERS
        if "RSA" not in kinds:
            _log.warn(
                "legacy_ciphers is on but {cert_path} is not an RSA certificate: "
                "TLS_RSA_WITH_AES_128_CBC_SHA cannot be negotiated with it",
                cert_path=", ".join(kinds.values()),
            )
    try:
        # No certificate here: CertificateOptions takes one, and its extraCertChain is one chain
        # for the whole context. The pairs go onto the context below, each with its own chain.
        options = CertificateOptions(
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
        raise ValueError(f"cannot set up TLS: {type(e).__name__}") from None
    for (cert_path, key_path), (chain, key) in zip(pairs, loaded, strict=True):
        try:
            _use_pair(context, chain, key)
        except (ValueError, TypeError, SSL.Error) as e:
            raise ValueError(
                f"cannot use {cert_path} with {key_path}: {type(e).__name__}"
            ) from None
    return options, [chain[0] for chain, _ in loaded]


def _use_pair(context: SSL.Context, chain: list[x509.Certificate], key: PrivateKeyTypes) -> None:
    """Put a certificate, its own chain and its key on the context, beside any other key type.

    OpenSSL keeps a chain per certificate, but takes one that way only from a file
    (``SSL_CTX_use_certificate_chain_file``; pyOpenSSL binds no ``SSL_CTX_add1_chain_cert``),
    so it gets the very certificates checked here through a private temporary file: never a
    second read of the operator's file, which may have changed in between.
    """
    with tempfile.NamedTemporaryFile(prefix="cwmpgw-chain-", suffix=".pem") as f:
        f.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        f.flush()
        context.use_certificate_chain_file(f.name)
    # pyOpenSSL takes cryptography keys directly; OpenSSL checks it against the certificate of
    # its own type, so the other pair is untouched.
    private_key: Any = key
    context.use_privatekey(private_key)
    context.check_privatekey()


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


def _certificate_names(hostname: str) -> list[x509.GeneralName]:
    """What a generated certificate names: hostname, then the loopback names."""
    names: list[x509.GeneralName] = []
    for dns_or_ip in (hostname, "localhost", "127.0.0.1", "::1"):
        general = _general_name(dns_or_ip)
        if general not in names:
            names.append(general)
    return names


def _generated_names(kind: str, cert_path: str, key_path: str) -> list[x509.GeneralName] | None:
    """The names of a usable generated pair of this kind; None if there is none to keep.

    Missing, torn or mismatched files are ours to replace (a crash between the two renames of
    :func:`_generate` leaves a new key beside the old certificate). ValueError if the
    certificate is not self-signed: someone put it there, and it is not ours to overwrite.
    """
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot read TLS certificate file {cert_path}: {e.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    if cert.issuer != cert.subject:
        raise ValueError(
            f"{cert_path} was not generated by cwmpgw (issued by "
            f"{cert.issuer.rfc4514_string()}): to serve it, configure it (acs.cert_file and "
            "acs.key_file; an RSA one beside an ECDSA one in acs.rsa_cert_file and "
            "acs.rsa_key_file), or remove it to have one generated"
        )
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if _kind(key) != kind or _spki(key.public_key()) != _spki(cert.public_key()):
        return None
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _generate(
    kind: str, cert_path: str, key_path: str, hostname: str, names: list[x509.GeneralName]
) -> str:
    """Make and write a new self-signed pair; its fingerprint."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_certificate(key, hostname, names)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first: a crash in between leaves the old certificate with the new key, or no
    # certificate, and either makes the next start generate the pair again.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return _fingerprint(cert)


def _self_signed_certificate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    hostname: str,
    names: list[x509.GeneralName],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
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
                # RSA key exchange (the legacy suites) encrypts the premaster secret to the key.
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
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


def _name_text(name: x509.GeneralName) -> str:
    return str(name.value)


def _public_kind(key: PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ECDSA"
    return type(key).__name__


def _kind(key: PrivateKeyTypes) -> str:
    """What OpenSSL keeps one certificate of per context."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    return type(key).__name__


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
