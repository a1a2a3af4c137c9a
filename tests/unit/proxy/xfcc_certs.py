"""Client certificates for the x-forwarded-client-cert tests (test_xfcc.py and
test_xfcc_envoy_parity.py), the RBAC subject tests (test_rbac_subject_envoy_parity.py) and
the TLS operator and SAN matcher tests (test_tls_operators_envoy_parity.py), signed by the
project's CertificateAuthority."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from remora.controlplane.ca import CertificateAuthority

RICH_URIS = ("spiffe://cluster.local/ns/rich/sa/one", "spiffe://cluster.local/ns/rich/sa/two")
RICH_DNS = ("one.example", "two.example")


def rich_client(ca: CertificateAuthority, directory: Path, sans: bool = True) -> Path:
    """A client certificate signed by CA's root with a subject RFC 2253 escapes (",", "+",
    a leading "#", a trailing space, non-ASCII in a UTF8String and a BMPString, a
    multi-valued RDN, emailAddress, an OID BoringSSL has no name for), two URI and two
    DNS SANs (none with SANS false); written with its root."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(
            NameOID.LOCALITY_NAME, "Z\u00fcrich \u6771", _type=_ASN1Type.BMPString)]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme, Inc+Co"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#ops ")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           'caf\u00e9 "q" <x>;\\')]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS,
                                                           "a@b.example")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(
            x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), "custom")]),
    ])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.root.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                              critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(RICH_URIS[0]), x509.DNSName(RICH_DNS[0]),
            x509.UniformResourceIdentifier(RICH_URIS[1]), x509.DNSName(RICH_DNS[1])]),
            critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert-chain.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.root_pem)
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return directory


# otherName type-ids: Microsoft's user principal name (a UTF8String) and one without a name
UPN_OID = "1.3.6.1.4.1.311.20.2.3"
NUMBER_OID = "1.3.6.1.4.1.99999.2"


def _der_utf8(text: str) -> bytes:
    body = text.encode()
    assert len(body) < 128
    return bytes([0x0C, len(body)]) + body


def every_kind_of_san(ca: CertificateAuthority, directory: Path, name: str,
                      ips: tuple[str, ...]) -> Path:
    """A certificate signed by CA's root (CN NAME, organisation "remora test") with SANs
    of each kind Envoy reads, NAME in each: a URI, two DNS names (one a ``*.`` wildcard),
    the IP addresses IPS, two email addresses, an otherName UPN (a UTF8String) and an
    otherName INTEGER (NUMBER_OID, 1234); written with its root (cert-chain.pem holds
    both, as rich_client's), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "remora test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/{name}/sa/{name}"),
        x509.DNSName(f"*.{name}.example"), x509.DNSName(f"{name}.example"),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
        x509.RFC822Name(f"ops@{name}.example"), x509.RFC822Name(f"second@{name}.example"),
        x509.OtherName(x509.ObjectIdentifier(UPN_OID), _der_utf8(f"{name}@corp.example")),
        x509.OtherName(x509.ObjectIdentifier(NUMBER_OID), bytes([0x02, 0x02, 0x04, 0xD2])),
    ]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca.key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert-chain.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.root_pem)
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "root-cert.pem").write_bytes(ca.root_pem)
    return directory
