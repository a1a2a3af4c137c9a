"""cert_details' SANs as Envoy's Utility::generalNameAsString writes them (the access
log's *_SAN operators, the SAN matchers), for the otherName value types and IP forms the
Envoy parity test (tests/unit/proxy/test_tls_operators_envoy_parity.py) does not carry,
and the SAN matchers' kinds (transport/tls.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.transport import cert_details, tls

OID = x509.ObjectIdentifier


def _der(sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_other_name_values_by_asn1_type() -> None:
    der = _der([
        x509.OtherName(OID("1.2.3.1"), bytes([0x01, 0x01, 0xFF])),  # BOOLEAN true
        x509.OtherName(OID("1.2.3.2"), bytes([0x01, 0x01, 0x00])),  # BOOLEAN false
        x509.OtherName(OID("1.2.3.3"), bytes([0x02, 0x01, 0xFE])),  # INTEGER -2
        x509.OtherName(OID("1.2.3.4"), bytes([0x06, 0x03, 0x2A, 0x03, 0x04])),  # OID 1.2.3.4
        x509.OtherName(OID("1.2.3.5"), bytes([0x1E, 0x04, 0x00, 0xE9, 0x00, 0x41])),  # BMP "éA"
        x509.OtherName(OID("1.2.3.6"), bytes([0x16, 0x02]) + b"ia"),  # IA5String
        x509.OtherName(OID("1.2.3.7"), bytes([0x05, 0x00])),  # NULL: nothing
    ])
    assert cert_details.other_names(der) == (
        ("1.2.3.1", "true"), ("1.2.3.2", "false"), ("1.2.3.3", "-2"), ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.5", "\u00e9A"), ("1.2.3.6", "ia"), ("1.2.3.7", ""))
    assert cert_details.sans_of(der, cert_details.OTHER_NAME)[:3] == ("true", "false", "-2")


def test_ip_sans_as_inet_ntop_writes_them() -> None:
    ips = ["10.0.0.1", "2001:db8::1", "::ffff:192.0.2.7", "::1", "fe80::1:0:0:2"]
    der = _der([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips])
    assert cert_details.sans_of(der, cert_details.IP) == tuple(ips)


def _matcher(spec: dict[str, object]) -> tls.SanMatcher:
    return tls._san_matcher(Fields(spec, "m", "SubjectAltNameMatcher"))


def test_san_matchers_compare_their_own_kind() -> None:
    der = _der([x509.DNSName("*.svc.example"), x509.RFC822Name("ops@svc.example"),
                x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                x509.OtherName(OID("1.3.6.1.4.1.311.20.2.3"), bytes([0x0C, 0x01]) + b"u")])
    cases = [
        ({"san_type": "DNS", "matcher": {"exact": "a.SVC.example"}}, True),
        ({"san_type": "DNS", "matcher": {"exact": "a.b.svc.example"}}, False),
        ({"san_type": "DNS", "matcher": {"suffix": ".svc.example"}}, True),
        ({"san_type": "EMAIL", "matcher": {"exact": "ops@svc.example"}}, True),
        ({"san_type": "URI", "matcher": {"exact": "ops@svc.example"}}, False),
        ({"san_type": "IP_ADDRESS", "matcher": {"exact": "2001:db8::1"}}, True),
        ({"san_type": "IP_ADDRESS", "matcher": {"exact": "2001:DB8:0:0:0:0:0:1"}}, False),
        ({"san_type": "OTHER_NAME", "oid": "1.3.6.1.4.1.311.20.2.3",
          "matcher": {"exact": "u"}}, True),
        ({"san_type": "OTHER_NAME", "oid": "1.3.6.1.4.1.311.20.2.4",
          "matcher": {"exact": "u"}}, False),
    ]
    for spec, matches in cases:
        assert tls.san_matches(der, [_matcher(spec)]) is matches, spec


@pytest.mark.parametrize(("spec", "said"), [
    ({"matcher": {"exact": "a"}}, "value must not be in list [SAN_TYPE_UNSPECIFIED]"),
    ({"san_type": "OTHER_NAME", "matcher": {"exact": "a"}},
     "Failed to create SAN matcher for OTHER_NAME with OID: "),
    ({"san_type": "OTHER_NAME", "oid": "1.2.x", "matcher": {"exact": "a"}},
     "Failed to create SAN matcher for OTHER_NAME with OID: 1.2.x"),
])
def test_san_matcher_configs_envoy_refuses(spec: dict[str, object], said: str) -> None:
    with pytest.raises(ConfigError) as err:
        _matcher(spec)
    assert said in str(err.value)
