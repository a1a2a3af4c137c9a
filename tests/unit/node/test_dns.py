from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remora.node import dns
from remora.node.dns import Zone

ZONE = Zone(services={("demo-to", "simple-server-svc"): "172.16.234.188"},
            pods={"10.20.0.77": "demo-to"})


def ask(name: str, qtype: int = dns.TYPE_A, qid: int = 4242) -> tuple[int, int, list[str], int]:
    reply = ZONE.answer(dns.build_query(qid, name, qtype))
    assert reply is not None
    got_id, rcode, addrs = dns.parse_response(reply)
    flags = struct.unpack("!H", reply[2:4])[0]
    return got_id, rcode, addrs, flags


def test_service_fqdn_resolves_to_cluster_ip() -> None:
    qid, rcode, addrs, flags = ask("simple-server-svc.demo-to.svc.cluster.local")
    assert (qid, rcode, addrs) == (4242, dns.RCODE_OK, ["172.16.234.188"])
    assert flags & 0x8000 and flags & 0x0400 and flags & 0x0080  # QR, AA, RA
    assert flags & 0x0100  # RD echoed


def test_names_are_case_insensitive_and_may_end_with_a_dot() -> None:
    assert ask("Simple-Server-SVC.demo-to.svc.cluster.local.")[2] == ["172.16.234.188"]


def test_other_types_of_an_existing_name_are_nodata_not_nxdomain() -> None:
    _, rcode, addrs, _ = ask("simple-server-svc.demo-to.svc.cluster.local", dns.TYPE_AAAA)
    assert (rcode, addrs) == (dns.RCODE_OK, [])


@pytest.mark.parametrize("name", [
    "simple-server-svc.demo-to.demo-from.svc.cluster.local",  # a search-list miss
    "simple-server-svc.demo-to",  # only fully qualified names are in the zone
    "simple-server-svc.other.svc.cluster.local",
    "example.com",
    "10-20-0-77.other.pod.cluster.local",
])
def test_unknown_names_are_nxdomain(name: str) -> None:
    assert ask(name)[1:3] == (dns.RCODE_NXDOMAIN, [])


def test_pod_names_resolve_in_their_namespace() -> None:
    assert ask("10-20-0-77.demo-to.pod.cluster.local")[2] == ["10.20.0.77"]


def test_malformed_queries_get_formerr_or_nothing() -> None:
    assert ZONE.answer(b"\x01") is None
    reply = ZONE.answer(b"\x12\x34" + b"\x00" * 4)
    assert reply is not None and reply[:2] == b"\x12\x34"
    assert struct.unpack("!H", reply[2:4])[0] & 0xF == dns.RCODE_FORMERR
    looping = dns.build_query(1, "a.b")[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    reply = ZONE.answer(looping)
    assert reply is not None and struct.unpack("!H", reply[2:4])[0] & 0xF == dns.RCODE_FORMERR


def test_compressed_question_names_are_read() -> None:
    # a name ending in a pointer back to itself would loop; a pointer to an earlier name
    # is what real resolvers may send in later sections
    msg = dns.build_query(7, "simple-server-svc.demo-to.svc.cluster.local")
    q = dns.parse_query(msg)
    assert q.name == "simple-server-svc.demo-to.svc.cluster.local"
    assert q.qtype == dns.TYPE_A and q.id == 7


def test_non_in_class_is_not_implemented() -> None:
    msg = bytearray(dns.build_query(9, "x.cluster.local"))
    msg[-1] = 3  # class CH
    reply = ZONE.answer(bytes(msg))
    assert reply is not None and struct.unpack("!H", reply[2:4])[0] & 0xF == dns.RCODE_NOTIMP


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(st.lists(label, min_size=1, max_size=6), st.integers(0, 65535))
def test_query_encoding_round_trips(labels: list[str], qid: int) -> None:
    name = ".".join(labels)
    q = dns.parse_query(dns.build_query(qid, name))
    assert (q.id, q.name, q.qtype, q.qclass) == (qid, name, dns.TYPE_A, dns.CLASS_IN)
    got_id, _, addrs = dns.parse_response(dns.build_response(q, 0, ["10.0.0.1", "10.0.0.2"]))
    assert got_id == qid and addrs == ["10.0.0.1", "10.0.0.2"]


def test_query_with_edns_opt_record_is_answered() -> None:
    # Go's resolver (and glibc with `options edns0`) add an OPT pseudo-record
    query = bytearray(dns.build_query(5, "simple-server-svc.demo-to.svc.cluster.local"))
    query[10:12] = b"\x00\x01"  # ARCOUNT = 1
    query += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    reply = ZONE.answer(bytes(query))
    assert reply is not None
    assert dns.parse_response(reply) == (5, dns.RCODE_OK, ["172.16.234.188"])
    # the question is echoed byte for byte (resolvers compare it, 0x20 case included)
    mixed = dns.build_query(6, "Simple-Server-Svc.Demo-To.svc.cluster.local")
    answer = ZONE.answer(mixed)
    assert answer is not None and answer[12:len(mixed)] == mixed[12:]
