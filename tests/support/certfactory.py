"""Test-time certificates: CAs, server and client certificates, good and deliberately bad.

Everything is made fresh with ``cryptography`` so no key material lives in the repository.
EC P-256 keys by default (fast to make); RSA only where a test needs it (the legacy
TLS_RSA_WITH_AES_128_CBC_SHA suite cannot work with an ECDSA certificate), made once per run.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertAuthority", "Issued", "pem"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_DAY = datetime.timedelta(days=1)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the whole run: generating them is the slow part of these tests."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "rsa":
        return _rsa_key()
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, ca: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Issued:
    """A certificate, its key, and the intermediates a peer needs to reach the root."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = field(default=())

    def cert_pem(self) -> bytes:
        """Leaf first, then intermediates: what a server or client presents."""
        return pem(self.cert) + b"".join(pem(c) for c in self.chain)

    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: str, name: str) -> tuple[str, str]:
        """Write ``name.pem`` and ``name-key.pem`` under directory; return both paths."""
        cert_path = os.path.join(directory, f"{name}.pem")
        key_path = os.path.join(directory, f"{name}-key.pem")
        with open(cert_path, "wb") as f:
            f.write(self.cert_pem())
        with open(key_path, "wb") as f:
            f.write(self.key_pem())
        return cert_path, key_path


class CertAuthority:
    """A CA (a root, or an intermediate when ``parent`` is given) that issues test certificates."""

    def __init__(self, name: str = "cwmpgw Test CA", parent: CertAuthority | None = None) -> None:
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.key: PrivateKey = _new_key("ec")
        self.parent = parent
        builder = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .public_key(self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
        )
        if parent is None:
            self.cert = self._sign(builder, self.name, self.key)
        else:
            self.cert = parent._sign(builder, parent.name, parent.key)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The intermediates from this CA up to (not including) the root."""
        if self.parent is None:
            return ()
        return (self.cert, *self.parent.chain)

    def pem(self) -> bytes:
        return pem(self.cert)

    def write(self, directory: str, name: str = "ca") -> str:
        path = os.path.join(directory, f"{name}.pem")
        with open(path, "wb") as f:
            f.write(self.pem())
        return path

    def _sign(
        self,
        builder: x509.CertificateBuilder,
        issuer: x509.Name,
        issuer_key: PrivateKey,
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        return (
            builder.issuer_name(issuer)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 30 * _DAY)
            .sign(issuer_key, hashes.SHA256())
        )

    def issue_server(self, hostname: str = "localhost", *, key_type: str = "ec") -> Issued:
        """A server certificate for hostname (SAN dNSName and 127.0.0.1)."""
        import ipaddress

        key = _new_key(key_type)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .public_key(key.public_key())
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(hostname),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False, key_encipherment=key_type == "rsa"), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return Issued(self._sign(builder, self.name, self.key), key, self.chain)

    def issue_client(
        self,
        cn: str | None = None,
        *,
        serial_number: str | None = None,
        san_dns: Sequence[str] = (),
        san_uri: Sequence[str] = (),
        expired: bool = False,
    ) -> Issued:
        """A client certificate naming a device in any of the places a vendor might put it."""
        key = _new_key("ec")
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cwmpgw test devices")]
        if serial_number is not None:
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
        if cn is not None:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in san_dns]
        names += [x509.UniformResourceIdentifier(u) for u in san_uri]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        not_before = not_after = None
        if expired:
            now = datetime.datetime.now(datetime.UTC)
            not_before, not_after = now - 30 * _DAY, now - _DAY
        cert = self._sign(builder, self.name, self.key, not_before=not_before, not_after=not_after)
        return Issued(cert, key, self.chain)
