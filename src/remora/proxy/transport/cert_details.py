"""What Envoy's ``Ssl::ConnectionInfo`` says about a TLS connection's certificates, from
their DER bytes (source/common/tls/connection_info_impl_base.cc and utility.cc): the
SHA-256 digest, the subject in RFC 2253 form, the URI and DNS SANs, the URL-encoded PEM of
the peer's certificate and of the chain it sent. The HTTP connection manager's
``x-forwarded-client-cert`` is built from these (http/xfcc.py).

Pure functions: the TLS transport (tls.py) hands over the bytes once per connection.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass

# The certificate is read with the small DER walker below, not the ``cryptography``
# package: importing that (its Rust extension) adds ~5.5 MiB of RSS to every sidecar that
# loads the connection manager, and the few fields Envoy prints are plain DER.

# -- the peer of one connection -----------------------------------------------------------


@dataclass(slots=True)
class TlsPeer:
    """An mTLS downstream whose peer presented a certificate (Envoy's
    ``peerCertificatePresented``): the peer's certificate and the chain it sent (leaf
    first, as BoringSSL's SSL_get_peer_full_cert_chain), and the URI SANs of the local
    certificate the handshake used. ``xfcc`` caches, per connection, what the connection
    manager built from them (http/xfcc.py; one connection has one connection manager)."""

    der: bytes
    chain: tuple[bytes, ...]
    local_uri_sans: tuple[str, ...]
    xfcc: tuple[object, str] | None = None


def sha256_hex(der: bytes) -> str:
    """Utility::getSha256DigestFromCertificate: lower-case hex of SHA-256 over the DER."""
    return hashlib.sha256(der).hexdigest()


def sha1_hex(der: bytes) -> str:
    """Utility::getSha1DigestFromCertificate: lower-case hex of SHA-1 over the DER."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


# RFC 5280 4.1: Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature };
# TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
# validity, subject, subjectPublicKeyInfo, [1] issuerUID, [2] subjectUID, [3] extensions }
_VERSION, _EXTENSIONS = 0xA0, 0xA3
_SAN_OID = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17, subjectAltName
_DNS_NAME, _URI = 0x82, 0x86  # GeneralName [2] dNSName, [6] uniformResourceIdentifier
_EMAIL, _IP = 0x81, 0x87  # [1] rfc822Name, [7] iPAddress


def _tbs_fields(der: bytes) -> list[tuple[int, int, int, int]]:
    """The TLVs of the certificate's TBSCertificate, the optional [0] version dropped
    (so the subject is item 4). ValueError for bytes that are not a certificate."""
    try:
        (_, _, cstart, cend), = _der_items(der, 0, len(der))
        _, _, tstart, tend = _der_items(der, cstart, cend)[0]
        fields = _der_items(der, tstart, tend)
    except (IndexError, ValueError) as err:
        raise ValueError("not a DER certificate") from err
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("not a DER certificate")
    return fields


def _general_names(der: bytes) -> list[tuple[int, bytes]]:
    """The subjectAltName extension's GeneralNames as (tag, value bytes), in the
    certificate's order (as Utility::getSubjectAltNames walks them)."""
    for tag, _, start, end in _tbs_fields(der)[6:]:
        if tag != _EXTENSIONS:
            continue
        (_, _, lstart, lend), = _der_items(der, start, end)
        for _, _, estart, eend in _der_items(der, lstart, lend):
            parts = _der_items(der, estart, eend)  # extnID, [critical], extnValue
            _, _, ostart, oend = parts[0]
            if der[ostart:oend] != _SAN_OID:
                continue
            _, _, vstart, vend = parts[-1]
            (_, _, gstart, gend), = _der_items(der, vstart, vend)
            return [(ntag, der[nstart:nend])
                    for ntag, _, nstart, nend in _der_items(der, gstart, gend)]
    return []


def _sans(der: bytes, kind: int) -> tuple[str, ...]:
    # the IA5String's bytes as they are (Envoy copies them into its string)
    return tuple(value.decode("latin-1") for tag, value in _general_names(der) if tag == kind)


def _ip_text(value: bytes) -> str:
    """An iPAddress SAN as Envoy's generalNameAsString writes it: an Ipv4Instance's or
    Ipv6Instance's addressAsString (inet_ntop: an IPv4-mapped IPv6 address keeps its
    dotted tail, "::ffff:10.1.2.3", where ``ipaddress`` writes "::ffff:a01:203"); ""
    for another length (Envoy assigns nothing then)."""
    if len(value) == 4:
        return str(ipaddress.IPv4Address(value))
    if len(value) == 16:
        addr = ipaddress.IPv6Address(value)
        mapped = addr.ipv4_mapped
        return f"::ffff:{mapped}" if mapped is not None else str(addr)
    return ""


# ASN.1 universal tags an otherName's value may carry (generalNameAsString's cases)
_BOOLEAN, _INTEGER, _BIT_STRING, _OCTET_STRING, _NULL, _OID = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
_ENUMERATED, _SEQUENCE, _SET = 0x0A, 0x30, 0x31
_OTHER_NAME = 0xA0  # GeneralName [0] otherName: SEQUENCE { type-id OID, [0] EXPLICIT value }
# the string and time types whose bytes Envoy copies as they are
_RAW_STRINGS = frozenset({_OCTET_STRING, 0x0C, 0x13, 0x14, 0x16, 0x1B, 0x17, 0x18, 0x1A})


def _other_name(value: bytes) -> tuple[str, str]:
    """An otherName's (type-id as a dotted OID, value as Envoy's generalNameAsString
    writes it): a BOOLEAN "true"/"false", an INTEGER or ENUMERATED in decimal, an OBJECT
    IDENTIFIER dotted, BMP and Universal strings converted to UTF-8, a SEQUENCE or SET
    its whole encoding, the other string and time types their bytes, and "" for NULL or
    a type it has no case for."""
    (_, _, ostart, oend), (_, _, vstart, vend) = _der_items(value, 0, len(value))[:2]
    oid = _oid_text(value[ostart:oend])
    (tag, tstart, start, end), = _der_items(value, vstart, vend)
    body = value[start:end]
    if tag == _BOOLEAN:
        return oid, "true" if any(body) else "false"
    if tag in (_INTEGER, _ENUMERATED):
        return oid, str(int.from_bytes(body, "big", signed=True))
    if tag == _OID:
        return oid, _oid_text(body)
    if tag == _BIT_STRING:  # ASN1_STRING_data: the bits, without the unused-bits octet
        return oid, body[1:].decode("utf-8", "replace")
    if tag in (_BMP, _UNIVERSAL):
        points = _codepoints(tag, body) or []
        return oid, "".join(map(chr, points))
    if tag in (_SEQUENCE, _SET):
        return oid, value[tstart:end].decode("utf-8", "replace")
    if tag in _RAW_STRINGS:
        return oid, body.decode("utf-8", "replace")
    return oid, ""


def all_sans(der: bytes) -> tuple[tuple[int, str], ...]:
    """The certificate's SANs of the kinds Envoy reads (DNS, URI, email, IP and
    otherName) as (tag, text), in its order, written as Envoy's
    Utility::generalNameAsString writes them."""
    out: list[tuple[int, str]] = []
    for tag, value in _general_names(der):
        if tag in (_DNS_NAME, _URI, _EMAIL):
            out.append((tag, value.decode("latin-1")))
        elif tag == _IP:
            out.append((tag, _ip_text(value)))
        elif tag == _OTHER_NAME:
            out.append((tag, _other_name(value)[1]))
    return tuple(out)


def other_names(der: bytes) -> tuple[tuple[str, str], ...]:
    """The certificate's otherName SANs as (type-id OID, text), in its order (an
    OTHER_NAME SAN matcher compares the type-id first: StringSanMatcher)."""
    return tuple(_other_name(value) for tag, value in _general_names(der)
                 if tag == _OTHER_NAME)


def sans_of(der: bytes, kind: int) -> tuple[str, ...]:
    """Utility::getSubjectAltNames(cert, KIND): the SANs of one GeneralName tag as text."""
    return tuple(text for tag, text in all_sans(der) if tag == kind)


DNS, URI, EMAIL, IP, OTHER_NAME = _DNS_NAME, _URI, _EMAIL, _IP, _OTHER_NAME


def serial_hex(der: bytes) -> str:
    """Utility::getSerialNumberFromCertificate: the serial number through BoringSSL's
    BN_bn2hex, i.e. the magnitude's bytes without leading zero bytes, in lower-case hex
    (each byte two digits, so "0a1b", not "a1b"), "-" before a negative one, "0" for 0."""
    _, _, start, end = _tbs_fields(der)[0]
    value = int.from_bytes(der[start:end], "big", signed=True)
    if value == 0:
        return "0"
    magnitude = abs(value)
    text = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big").hex()
    return "-" + text if value < 0 else text


_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18


def _asn1_time(tag: int, body: bytes) -> float:
    """Seconds since the epoch of a UTCTime (RFC 5280 4.1.2.5.1: YY >= 50 is 19YY) or a
    GeneralizedTime, both in the ``...Z`` form RFC 5280 requires."""
    text = body.decode("ascii").rstrip("Z")
    if tag == _UTC_TIME:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError("not an ASN.1 time")
    whole = text.split(".", 1)[0]
    fields = [int(whole[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return float(calendar.timegm((*fields, 0, 0, 0)))


def validity(der: bytes) -> tuple[float, float]:
    """notBefore and notAfter of the certificate DER, in seconds since the epoch (Envoy's
    Utility::getValidFrom and getExpirationTime: whole seconds)."""
    _, _, start, end = _tbs_fields(der)[3]
    (tag1, _, s1, e1), (tag2, _, s2, e2) = _der_items(der, start, end)
    return _asn1_time(tag1, der[s1:e1]), _asn1_time(tag2, der[s2:e2])


def uri_sans(der: bytes) -> tuple[str, ...]:
    return _sans(der, _URI)


def dns_sans(der: bytes) -> tuple[str, ...]:
    return _sans(der, _DNS_NAME)


def pem_first_der(pem: bytes) -> bytes | None:
    """The DER of the first certificate in a PEM chain (the local certificate, Envoy's
    SSL_get_certificate); None when there is none or it cannot be read."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(pem[start:stop + len(end)].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def pem_uri_sans(pem: bytes) -> tuple[str, ...]:
    """URI SANs of the first certificate in a PEM chain (the local certificate: Envoy's
    ``uriSanLocalCertificate``); () when there is none or it cannot be read."""
    der = pem_first_der(pem)
    if der is None:
        return ()
    try:
        return uri_sans(der)
    except ValueError:
        return ()


# Http::Utility::PercentEncoding::urlEncode: every byte but ALPHA, DIGIT and "*-._" as
# %XX in upper-case hex (space too, "~" too)
_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")
_URL_ENCODE = {b: chr(b) if b in _URL_SAFE else f"%{b:02X}" for b in range(256)}


def url_encode(data: bytes) -> str:
    return "".join(_URL_ENCODE[b] for b in data)


def url_encoded_pem(der: bytes) -> str:
    """``urlEncodedPemEncodedPeerCertificate``: PEM_write_bio_X509's text (64-column
    base64 between the BEGIN/END lines, each line ending in a newline), URL-encoded."""
    return url_encode(ssl.DER_cert_to_PEM_cert(der).encode())


def url_encoded_pem_chain(chain: tuple[bytes, ...]) -> str:
    """``urlEncodedPemEncodedPeerCertificateChain``: each certificate's, concatenated."""
    return "".join(url_encoded_pem(der) for der in chain)


# -- the subject in RFC 2253 form ----------------------------------------------------------
# Utility::getSubjectFromCertificate is BoringSSL's X509_NAME_print_ex with XN_FLAG_RFC2253:
# entries last to first, "," between RDNs and "+" within one, short names (the dotted OID
# for one BoringSSL does not know, its value then dumped as "#" and the hex of its DER),
# values converted to UTF-8 and escaped (ESC_2253, ESC_CTRL, ESC_MSB).

# BoringSSL's short names of the attribute types a subject carries (crypto/obj/obj_dat.h)
_SHORT_NAMES = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C",
    "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.12": "title", "2.5.4.13": "description", "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode", "2.5.4.41": "name", "2.5.4.42": "GN", "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier", "2.5.4.45": "x500UniqueIdentifier",
    "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym", "2.5.4.72": "role",
    "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress", "1.2.840.113549.1.9.2": "unstructuredName",
    "0.9.2342.19200300.100.1.1": "UID", "0.9.2342.19200300.100.1.25": "DC",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL", "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}
# ASN.1 string tags and how BoringSSL reads their characters (string_type_to_encoding)
_UTF8, _BMP, _UNIVERSAL = 12, 30, 28
_LATIN1 = frozenset({18, 19, 20, 22, 23, 24, 26})  # Numeric, Printable, T61, IA5, times, Visible
_ESCAPED = frozenset(',+<>;')


def _der_items(data: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """The DER TLVs in DATA[pos:end]: (tag, start of the TLV, start of the value, end)."""
    items = []
    while pos < end:
        start, tag = pos, data[pos]
        n = data[pos + 1]
        pos += 2
        if n & 0x80:
            count = n & 0x7F
            n = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        if pos + n > end:
            raise ValueError("DER item runs past its container")
        items.append((tag, start, pos, pos + n))
        pos += n
    return items


def _oid_text(body: bytes) -> str:
    first = body[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _codepoints(tag: int, body: bytes) -> list[int] | None:
    if tag == _UTF8:
        return [ord(c) for c in body.decode("utf-8", "replace")]
    if tag in _LATIN1:
        return list(body)
    if tag == _BMP:
        return [int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body) - 1, 2)]
    if tag == _UNIVERSAL:
        return [int.from_bytes(body[i:i + 4], "big") for i in range(0, len(body) - 3, 4)]
    return None


def _escaped(points: list[int]) -> str:
    """do_buf with UTF-8 conversion: each character's UTF-8 bytes through do_esc_char."""
    out: list[str] = []
    last = len(points) - 1
    for i, cp in enumerate(points):
        encoded = chr(cp).encode("utf-8", "surrogatepass")
        for j, b in enumerate(encoded):
            first_byte = i == 0 and j == 0
            last_byte = i == last and j == len(encoded) - 1
            c = chr(b)
            if b > 0x7F or b < 0x20 or b == 0x7F:
                out.append(f"\\{b:02X}")
            elif c in '\\"' or c in _ESCAPED or (first_byte and c in " #") or (
                    last_byte and c == " "):
                out.append("\\" + c)
            else:
                out.append(c)
    return "".join(out)


def subject_rfc2253(der: bytes) -> str:
    """The subject of the certificate DER as Envoy's ``subjectPeerCertificate`` prints it
    ("" for an empty subject, as Istio's workload certificates have)."""
    return _name_rfc2253(der, 4)


def issuer_rfc2253(der: bytes) -> str:
    """The issuer of the certificate DER as Envoy's ``issuerPeerCertificate`` prints it
    (Utility::getIssuerFromCertificate: the same X509_NAME_print_ex, on the issuer)."""
    return _name_rfc2253(der, 2)


def _name_rfc2253(der: bytes, field: int) -> str:
    """The Name at TBSCertificate item FIELD (the version dropped: 2 issuer, 4 subject)."""
    data = der
    entries: list[tuple[int, str]] = []  # (RDN index, "name=value")
    _, _, vstart, vend = _tbs_fields(der)[field]
    for index, (_, _, sstart, send) in enumerate(_der_items(data, vstart, vend)):
        for _, _, astart, aend in _der_items(data, sstart, send):
            (_, _, ostart, oend), (tag, tstart, bstart, bend) = _der_items(data, astart, aend)
            oid = _oid_text(data[ostart:oend])
            name = _SHORT_NAMES.get(oid)
            points = _codepoints(tag, data[bstart:bend]) if name is not None else None
            # an unknown attribute type or string type: its DER, dumped
            value = "#" + data[tstart:bend].hex().upper() if points is None \
                else _escaped(points)
            entries.append((index, f"{name or oid}={value}"))
    out: list[str] = []
    prev = -1
    for index, text in reversed(entries):
        if prev != -1:
            out.append("+" if index == prev else ",")
        out.append(text)
        prev = index
    return "".join(out)
