"""How a client certificate names a device, and whether it names the one in the Inform.

TR-069 leaves the place of the identity to the vendor: the subject commonName, the subject
serialNumber, or a SAN, holding the serial number, ``OUI-SerialNumber`` (the username form of
§3.4.4) or the full ``OUI-ProductClass-SerialNumber`` id. The operator configures which field
and which form; this module reads the field and compares, with no I/O. The TLS layer has
already verified the certificate against the configured CA, so only the comparison is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import ISSLTransport

from cwmpgw.cwmp.messages import DeviceId

__all__ = [
    "IDENTITY_FIELDS",
    "MATCH_MODES",
    "CertIdentity",
    "certificate_identity",
    "matches",
    "peer_certificate",
]

IDENTITY_FIELDS: Final = ("cn", "serial_number", "san_dns", "san_uri", "any")
MATCH_MODES: Final = ("serial", "oui_serial", "device_id")


@dataclass(frozen=True)
class CertIdentity:
    """What a certificate says in the configured field, in certificate order, duplicates removed."""

    values: tuple[str, ...]


def certificate_identity(cert: x509.Certificate, field: str) -> CertIdentity:
    """The values of field ("cn", "serial_number", "san_dns", "san_uri" or "any") in cert."""
    if field == "any":
        values = [v for f in IDENTITY_FIELDS[:-1] for v in _field_values(cert, f)]
    elif field in IDENTITY_FIELDS:
        values = _field_values(cert, field)
    else:
        raise ValueError(f"identity field must be one of {', '.join(IDENTITY_FIELDS)}: {field!r}")
    return CertIdentity(tuple(dict.fromkeys(v for v in values if v)))


def matches(identity: CertIdentity, device: DeviceId, device_id: str, match: str) -> bool:
    """Whether one of the certificate's values names this device, compared exactly.

    ``match`` is "serial" (the SerialNumber alone: unique only within what the operator's CA
    issues, as vendors' serial numbers can collide), "oui_serial" (``OUI-SerialNumber``, raw,
    as TR-069's username convention writes it) or "device_id" (``device_id``, the escaped
    ``OUI-ProductClass-SerialNumber`` of :func:`cwmpgw.cwmp.deviceid.device_id`).
    """
    if match == "serial":
        expected = device.serial_number
    elif match == "oui_serial":
        # "-" separates: an OUI containing one (never valid: six hex digits) could make
        # "A-B"+"C" and "A"+"B-C" the same string, so such a device never matches.
        if "-" in device.oui:
            return False
        expected = f"{device.oui}-{device.serial_number}"
    elif match == "device_id":
        expected = device_id
    else:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}: {match!r}")
    return bool(device.serial_number) and expected in identity.values


def peer_certificate(transport: object) -> x509.Certificate | None:
    """The client certificate of a Twisted TLS transport, or None (none sent, or not TLS).

    With the policy of :func:`cwmpgw.acs.tls.server_options` any certificate here has been
    verified: one that fails verification fails the handshake before the application sees
    the connection.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    # pyOpenSSL's X509 (what Twisted's TLS transport returns), or already a cryptography one.
    cert: Any = transport.getPeerCertificate()
    if cert is None:
        return None
    if isinstance(cert, x509.Certificate):
        return cert
    converted: x509.Certificate = cert.to_cryptography()
    return converted


def _field_values(cert: x509.Certificate, field: str) -> list[str]:
    if field == "cn":
        return _subject(cert, NameOID.COMMON_NAME)
    if field == "serial_number":
        return _subject(cert, NameOID.SERIAL_NUMBER)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        return []  # a malformed extension names nobody
    kind: type[x509.DNSName] | type[x509.UniformResourceIdentifier] = (
        x509.DNSName if field == "san_dns" else x509.UniformResourceIdentifier
    )
    return list(san.get_values_for_type(kind))


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    try:
        attributes = cert.subject.get_attributes_for_oid(oid)
    except ValueError:
        return []
    return [a.value for a in attributes if isinstance(a.value, str)]
