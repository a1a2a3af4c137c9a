"""Cluster DNS, the pure part: DNS messages (RFC 1035) and the cluster.local zone.

Answers what CoreDNS's kubernetes plugin answers for ClusterIP services and pods
(https://github.com/kubernetes/dns/blob/master/docs/specification.md):
``<service>.<ns>.svc.cluster.local`` -> the ClusterIP, ``<a-b-c-d>.<ns>.pod.cluster.local``
-> that pod address; an existing name asked for another type gets NOERROR with no answer
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
    answers = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, CLASS_IN, ttl, 4)
        + ipaddress.IPv4Address(a).packed for a in addresses)
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
    """(id, rcode, A addresses) of a response (tests and `remora node status` use it)."""
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
        offset += length
    return qid, flags & 0x000F, found


@dataclass
class Zone:
    """The cluster's names: services and pods by namespace."""

    domain: str = "cluster.local"
    services: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, name) -> IP
    pods: dict[str, str] = field(default_factory=dict)  # pod IP -> namespace

    def lookup(self, name: str) -> tuple[int, list[str]]:
        """(rcode, A addresses) for a fully qualified NAME."""
        name = name.lower().rstrip(".")
        suffix = "." + self.domain
        if not name.endswith(suffix):
            return RCODE_NXDOMAIN, []
        labels = name[: -len(suffix)].split(".")
        if len(labels) == 3 and labels[2] == "svc":
            ip = self.services.get((labels[1], labels[0]))
            if ip:
                return RCODE_OK, [ip]
        if len(labels) == 3 and labels[2] == "pod":
            ip = labels[0].replace("-", ".")
            if self.pods.get(ip) == labels[1]:
                return RCODE_OK, [ip]
        return RCODE_NXDOMAIN, []

    def answer(self, data: bytes) -> bytes | None:
        try:
            q = parse_query(data)
        except DnsFormatError:
            return error_response(data, RCODE_FORMERR)
        if q.qclass != CLASS_IN:
            return build_response(q, RCODE_NOTIMP, [])
        rcode, addresses = self.lookup(q.name)
        return build_response(q, rcode, addresses if q.qtype == TYPE_A else [])
