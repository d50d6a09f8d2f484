"""Server-side TLS for the ACS: a self-signed certificate for first runs, and the context.

CPEs expect HTTPS from the first boot, so a fresh install makes its own ECDSA P-256 certificate
(the cheaper handshake on our hot path) and keeps it; an operator replaces the two PEM files with
real ones and the same loader serves the whole chain.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import tempfile
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger

__all__ = ["ensure_self_signed", "fingerprint_sha256", "server_options"]

_log = Logger()

CERT_FILE = "acs-cert.pem"
KEY_FILE = "acs-key.pem"
_VALIDITY = datetime.timedelta(days=3650)
_BACKDATE = datetime.timedelta(days=1)


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
    cert = x509.load_pem_x509_certificate(cert_pem)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def server_options(cert_path: str, key_path: str) -> CertificateOptions:
    """TLS 1.2+ server options from a PEM key and a PEM chain (leaf first, then intermediates).

    Everything is loaded and checked now, so a bad file stops startup with a message naming it
    rather than failing the first handshake.
    """
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
    leaf = chain[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ValueError(f"{key_path}: private key does not match the certificate in {cert_path}")
    # pyOpenSSL takes cryptography objects directly (its own X509/PKey wrappers are deprecated);
    # Twisted only stores them and hands them to the Context, whatever its annotations say.
    private_key: Any = key
    extra: list[Any] = chain[1:]
    leaf_cert: Any = leaf
    try:
        options = CertificateOptions(
            privateKey=private_key,
            certificate=leaf_cert,
            extraCertChain=extra,
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        options.getContext()  # builds and caches the context: OpenSSL's own checks run now
    except (ValueError, TypeError, SSL.Error) as e:
        raise ValueError(f"cannot use {cert_path} with {key_path}: {type(e).__name__}") from None
    return options


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
