"""http/header_map.py: the inline names are exactly what Envoy 1.40 registers (the lists
its binary prints at start, tests/data/envoy-1.40-inline-headers.txt), and repeated lines
join as HeaderMapImpl::insertByKey / appendToHeader join them. The end-to-end parity with
the real Envoy is tests/unit/proxy/http/test_header_join_parity.py."""

from __future__ import annotations

from remora.proxy.http.codec import RequestDecoder
from remora.proxy.http.header_map import INLINE_REQUEST, INLINE_RESPONSE, appended, join_inline
from tests.datafiles import data_path


def _printed(kind: str) -> set[str]:
    for line in data_path("envoy-1.40-inline-headers.txt").read_text().splitlines():
        head, _, names = line.partition(": ")
        if head == f"{kind} header map":
            return set(names.split(","))
    raise AssertionError(kind)


def test_inline_sets_are_the_ones_envoy_prints() -> None:
    # pseudo-headers as HTTP/1.1 names: :authority is Host (Envoy maps the legacy host
    # header onto it); :method, :path, :scheme, :protocol, :status are no header lines
    req = {n for n in _printed("request") if not n.startswith(":")} | {"host"}
    resp = {n for n in _printed("response") if not n.startswith(":")}
    assert req == INLINE_REQUEST
    assert resp == INLINE_RESPONSE


def test_appended_as_append_to_header() -> None:
    assert appended("a", "b") == "a,b"
    assert appended("a", "") == "a"  # an empty value adds nothing
    assert appended("", "b") == "b"  # no delimiter after an empty one
    assert appended("", "") == ""


def test_join_inline_keeps_order_and_other_names() -> None:
    lines = [("server", "s1"), ("set-cookie", "a=1"), ("vary", ""), ("server", "s2"),
             ("set-cookie", "b=2"), ("vary", "accept"), ("server", "")]
    assert join_inline(lines, INLINE_RESPONSE) == [
        ("server", "s1,s2"), ("set-cookie", "a=1"), ("vary", "accept"), ("set-cookie", "b=2")]


def test_request_decoder_joins_inline_lines_only() -> None:
    dec = RequestDecoder(60 * 1024, 100, 1 << 20)
    dec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: u1\r\nCookie: c=1\r\n"
             b"user-agent: u2\r\nCOOKIE: d=2\r\nUser-Agent:\r\nx-a: 1\r\nX-A: 2\r\n\r\n")
    req = dec.ready.popleft()
    assert req.headers == [("host", "a"), ("user-agent", "u1,u2"), ("cookie", "c=1"),
                           ("cookie", "d=2"), ("x-a", "1"), ("x-a", "2")]
    # lookups see every header comma-joined, as REQ() in Envoy's access log
    assert req.hmap["user-agent"] == "u1,u2" and req.hmap["cookie"] == "c=1,d=2"
