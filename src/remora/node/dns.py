"""Cluster DNS, the pure part: DNS messages (RFC 1035) and the cluster.local zone.

Answers what CoreDNS's kubernetes plugin answers for ClusterIP services and pods
(https://github.com/kubernetes/dns/blob/master/docs/specification.md):
``<service>.<ns>.svc.cluster.local`` -> the ClusterIP (A for the IPv4 one, AAAA for the
IPv6 one of a dual-stack or IPv6 service), ``<a-b-c-d>.<ns>.pod.cluster.local`` -> that pod
address (an IPv6 pod: its address with `-` for `:`, `fd00-10-20--77`); an existing
name asked for another type gets NOERROR with no answer
(so glibc's parallel A+AAAA lookup succeeds with the A record); anything else NXDOMAIN.
The short forms `svc`, `svc.ns`, `svc.ns.svc` are the resolver's job: the pod's
resolv.conf has Kubernetes' search list and ndots:5. Responses are authoritative with RA
set: Go's pure resolver treats a non-authoritative, non-recursive empty answer as a lame
referral.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
TTL = 5


class DnsFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str  # lower-case, no trailing dot
    qtype: int
    qclass: int
    wire: bytes  # the question section as received (echoed in the response)

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & 0x0100)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end: int | None = None
    for _ in range(128):  # bounds compression-pointer loops
        if offset >= len(data):
            raise DnsFormatError("name runs past the end of the message")
        length = data[offset]
        if length == 0:
            return ".".join(labels), end if end is not None else offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length > 63:
            raise DnsFormatError("label longer than 63 bytes")
        labels.append(data[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise DnsFormatError("too many labels or a pointer loop")


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split(".") if name.strip(".") else []:
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) <= 63:
            raise DnsFormatError(f"bad label {label!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def parse_query(data: bytes) -> Question:
    if len(data) < 12:
        raise DnsFormatError("message shorter than the 12-byte header")
    qid, flags, qdcount = struct.unpack("!HHH", data[:6])
    if flags & 0x8000:
        raise DnsFormatError("not a query")
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions (exactly one is supported)")
    name, offset = _read_name(data, 12)
    if offset + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack("!HH", data[offset:offset + 4])
    return Question(qid, flags, name.lower().rstrip("."), qtype, qclass, data[12:offset + 4])


def build_response(q: Question, rcode: int, addresses: list[str], ttl: int = TTL) -> bytes:
    # QR=1, opcode copied, AA=1, RD copied, RA=1
    flags = 0x8000 | (q.flags & 0x7800) | 0x0400 | (q.flags & 0x0100) | 0x0080 | rcode
    header = struct.pack("!HHHHHH", q.id, flags, 1, len(addresses), 0, 0)
    answers = b""
    for a in addresses:
        packed = ipaddress.ip_address(a).packed
        rtype = TYPE_AAAA if len(packed) == 16 else TYPE_A
        answers += b"\xc0\x0c" + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(packed)) + packed
    return header + q.wire + answers


def error_response(data: bytes, rcode: int) -> bytes | None:
    """A bare response carrying RCODE for an unparsable query, if it has an ID at all."""
    if len(data) < 2:
        return None
    return data[:2] + struct.pack("!HHHHH", 0x8000 | 0x0080 | rcode, 0, 0, 0, 0)


def build_query(qid: int, name: str, qtype: int = TYPE_A) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", qtype, CLASS_IN)


def parse_response(data: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, A and AAAA addresses) of a response (tests and `remora node status`
    use it)."""
    qid, flags, qd, an = struct.unpack("!HHHH", data[:8])
    offset = 12
    for _ in range(qd):
        _, offset = _read_name(data, offset)
        offset += 4
    found = []
    for _ in range(an):
        _, offset = _read_name(data, offset)
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10
        if rtype == TYPE_A and length == 4:
            found.append(str(ipaddress.IPv4Address(data[offset:offset + 4])))
        elif rtype == TYPE_AAAA and length == 16:
            found.append(str(ipaddress.IPv6Address(data[offset:offset + 16])))
        offset += length
    return qid, flags & 0x000F, found


@dataclass
class Zone:
    """The cluster's names: services and pods by namespace."""

    domain: str = "cluster.local"
    services: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, name) -> IPv4
    pods: dict[str, str] = field(default_factory=dict)  # pod IP (either family) -> namespace
    services6: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, name) -> IPv6

    def lookup(self, name: str, qtype: int = TYPE_A) -> tuple[int, list[str]]:
        """(rcode, addresses of QTYPE: A or AAAA) for a fully qualified NAME; a name that
        exists with only the other type answers NOERROR with no address."""
        name = name.lower().rstrip(".")
        suffix = "." + self.domain
        if not name.endswith(suffix):
            return RCODE_NXDOMAIN, []
        labels = name[: -len(suffix)].split(".")
        if len(labels) == 3 and labels[2] == "svc":
            key = (labels[1], labels[0])
            v4, v6 = self.services.get(key), self.services6.get(key)
            if v4 or v6:
                found = v4 if qtype == TYPE_A else v6 if qtype == TYPE_AAAA else None
                return RCODE_OK, [found] if found else []
        if len(labels) == 3 and labels[2] == "pod":
            ip = _pod_address(labels[0])
            if ip and self.pods.get(ip) == labels[1]:
                wanted = TYPE_AAAA if ":" in ip else TYPE_A
                return RCODE_OK, [ip] if qtype == wanted else []
        return RCODE_NXDOMAIN, []

    def answer(self, data: bytes) -> bytes | None:
        try:
            q = parse_query(data)
        except DnsFormatError:
            return error_response(data, RCODE_FORMERR)
        if q.qclass != CLASS_IN:
            return build_response(q, RCODE_NOTIMP, [])
        rcode, addresses = self.lookup(q.name, q.qtype)
        return build_response(q, rcode, addresses)


def _pod_address(label: str) -> str:
    """The address a pod record's first label names: `10-20-0-77` (IPv4) or
    `fd00-10-20--77` (IPv6, `:` written `-`), normalised; "" if it is neither."""
    for text in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            continue
    return ""
