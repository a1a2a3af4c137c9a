"""The HTTP/1.1 codec's framing decisions without sockets (issue 15): bytes in, requests,
responses and errors out. The behaviour each test pins is Envoy 1.40's, as observed side by
side in test_desync.py."""

from __future__ import annotations

import contextlib

import httptools
import pytest

from remora.proxy.http.codec import (
    CodecError,
    Request,
    RequestDecoder,
    ResponseDecoder,
    ResponseError,
)


def decode(*chunks: bytes) -> tuple[list[Request], RequestDecoder]:
    dec = RequestDecoder(60 * 1024, 100, 1 << 20)
    for c in chunks:
        dec.feed(c)
    return list(dec.ready), dec


def refused(*chunks: bytes) -> tuple[int, str]:
    with pytest.raises(CodecError) as e:
        decode(*chunks)
    return e.value.status, e.value.details


def test_trailers_never_join_the_head() -> None:
    (req,), _ = decode(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\nX-User: admin\r\nHost: evil\r\n\r\n")
    assert req.headers == [("host", "a"), ("transfer-encoding", "chunked")]
    assert req.hmap["host"] == "a" and b"".join(req.body) == b"hello" and req.complete


@pytest.mark.parametrize("chunks", [(b"GET /\r\n",), (b"GET /", b"\r\n"), (b"GET /a", b"b\n"),
                                    (b"G", b"ET /x\r\n")])
def test_http09_line_is_answered_at_its_line_end(chunks: tuple[bytes, ...]) -> None:
    assert refused(*chunks) == (426, "low_version")


@pytest.mark.parametrize("chunks", [(b"GET / HTTP/1.1",), (b"GET /a HTTP/1.1\r\nX: /a\r\n",),
                                    (b"G", b"ET /a HT")])
def test_incomplete_request_lines_wait(chunks: tuple[bytes, ...]) -> None:
    ready, dec = decode(*chunks)
    assert ready == [] and dec.head_in_progress and dec.error is None


def test_header_value_that_never_ends_is_refused_on_bytes_received() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
    assert refused(head + b"a" * 70_000) == (431, "http1.headers_too_large")
    assert refused(head, *[b"a" * 1000] * 70) == (431, "http1.headers_too_large")


def test_a_big_body_after_a_head_is_not_counted_as_head() -> None:
    big = b"x" * 300_000
    ready, dec = decode(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n"
                        + big[:60_000], big[60_000:200_000], big[200_000:] + b"GET /n")
    assert [r.url for r in ready] == ["/"] and ready[0].complete
    assert dec.head_in_progress  # the pipelined next request has begun


@pytest.mark.parametrize("te", [b"xchunked", b"gzip, chunked", b"chunked, chunked",
                                b"identity"])
def test_only_chunked_transfer_encoding(te: bytes) -> None:
    assert refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te
                   + b"\r\n\r\n") == (501, "http1.invalid_transfer_encoding")


def test_chunked_in_any_case_is_chunked() -> None:
    (req,), _ = decode(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
                       b"2\r\nok\r\n0\r\n\r\n")
    assert req.chunked and b"".join(req.body) == b"ok"


@pytest.mark.parametrize("host", [b"a b", b"a, evil", b'"a', b"a\\b"])
def test_host_must_be_an_authority(host: bytes) -> None:
    assert refused(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == (
        400, "http.invalid_authority")


def test_upgrade_request_has_no_body_on_this_hop() -> None:
    tail = b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    (req,), dec = decode(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n" + tail)
    assert req.upgrade and not req.chunked and req.content_length is None
    assert req.body == [] and dec.upgraded and dec.upgrade_tail == tail


class _Flags:
    """httptools callbacks that note llhttp's own upgrade flag at the head's end."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.upgrade: bool | None = None

    def on_headers_complete(self) -> None:
        self.upgrade = self.parser.should_upgrade()


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: upgrade\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade:\r\n",
    # (an empty Upgrade with Connection: upgrade is one where the decoder follows Envoy,
    # not llhttp: test_an_empty_upgrade_is_an_upgrade_as_for_envoy; h2c is not an
    # upgrade for the decoder: test_an_h2c_upgrade_is_served_as_http11...)
    b"GET / HTTP/1.1\r\nHost: a\r\nUPGRADE: foo\r\nConnection: keep-alive, Upgrade\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\nProxy-Connection: upgrade\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\nConnection: close\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Upgrade: ws\r\nConnection: upgrade\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\nConnection: upgrade\r\n"
    b"Content-Length: 2\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nUpgrade: ws\r\n",
])
def test_upgrade_is_llhttps_flag(head: bytes) -> None:
    # the decoder asks httptools for the flag only when an Upgrade header is present and
    # otherwise takes the method's test (llhttp__before_headers_complete): the same answer
    flags = _Flags()
    with contextlib.suppress(httptools.HttpParserUpgrade):
        flags.parser.feed_data(head + b"\r\n")
    (req,), _ = decode(head + b"\r\n")
    assert flags.upgrade is not None and req.upgrade is flags.upgrade


@pytest.mark.parametrize("value", [b"", b" ", b"\t ", b"  \t"])
def test_an_empty_upgrade_is_an_upgrade_as_for_envoy(value: bytes) -> None:
    # llhttp sets no upgrade flag for an Upgrade header without a value; Envoy's
    # Utility::isUpgrade does (the header is there, Connection has the token), and the
    # request is refused 403 as an upgrade of no configured type. The decoder reports an
    # upgrade and parses no further: neither the body nor the request behind it is HTTP
    flags = _Flags()
    head = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: x, Upgrade\r\nUpgrade:" + value
    data = head + b"\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    flags.parser.feed_data(data)
    assert flags.upgrade is False
    (req,), dec = decode(data)
    assert (req.upgrade, dec.upgraded, req.content_length, req.body) == (True, True, None, [])


# -- responses -----------------------------------------------------------------------------
def respond(head_request: bool, *chunks: bytes) -> tuple[ResponseDecoder, bytes]:
    body: list[bytes] = []
    dec = ResponseDecoder(head_request, lambda d: None, body.append)
    for c in chunks:
        dec.feed(c)
    return dec, b"".join(body)


POISON = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED"


@pytest.mark.parametrize("head_request,data,body", [
    (False, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + POISON, b"ok"),
    (False, b"HTTP/1.1 204 No Content\r\n\r\n" + POISON, b""),
    (False, b"HTTP/1.1 304 Not Modified\r\n\r\nPOISONED", b""),
    (True, b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED", b""),
    (False, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            b"garbage", b"ok"),
])
def test_one_response_then_anything_is_trailing(head_request: bool, data: bytes,
                                                body: bytes) -> None:
    dec, got = respond(head_request, data)
    assert dec.complete and dec.trailing and got == body
    assert len(dec.headers) <= 1  # never a second response's headers merged in


def test_lines_after_a_head_response_never_join_its_headers() -> None:
    # llhttp does not know the request was a HEAD: it reads on, in the same read, for
    # the announced chunked body and hands over its trailers; the response ended with its
    # head, so they are not its headers
    dec, got = respond(True, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"0\r\nX-Evil: 1\r\nX-More: 2\r\n\r\n")
    assert dec.complete and got == b""
    assert dec.headers == [("transfer-encoding", "chunked")]


def test_a_clean_response_is_not_trailing() -> None:
    dec, got = respond(False, b"HTTP/1.1 100 Continue\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert dec.complete and not dec.trailing and dec.status == 200 and got == b"ok"
    dec, _ = respond(True, b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
    assert dec.complete and not dec.trailing


def test_bytes_fed_after_completion_are_trailing() -> None:
    dec, _ = respond(False, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"x")
    assert dec.trailing


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx-big: " + b"p" * 100_000 + b"\r\n\r\n",
    b"not http\r\n\r\n",
])
def test_malformed_responses(data: bytes) -> None:
    with pytest.raises(ResponseError):
        respond(False, data)


def test_response_header_line_that_never_ends() -> None:
    with pytest.raises(ResponseError):
        respond(False, b"HTTP/1.1 200 OK\r\nx-big: ", *[b"p" * 1000] * 100)


def test_a_40k_head_over_several_reads_is_fine() -> None:
    # 99 header lines and content-length: the most Envoy takes (MAX_RESPONSE_HEADERS)
    head = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 400)
                                             for i in range(99))
            + b"content-length: 2\r\n\r\nok")
    dec, got = respond(False, *[head[i:i + 8000] for i in range(0, len(head), 8000)])
    assert dec.complete and got == b"ok"


def test_unrequested_101_ends_http() -> None:
    dec, _ = respond(False, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\n"
                            b"connection: upgrade\r\n\r\ntunnel")
    assert dec.complete and dec.status == 101 and dec.upgrade_tail == b"tunnel"


@pytest.mark.parametrize("target,details", [
    (b"ftp://b/x", "http1.invalid_scheme"), (b"http://~.example/x", "http1.invalid_url"),
    (b"http://b:/x", "http1.invalid_url"), (b"http:///x", "http1.invalid_url"),
    (b"http://b://c/x", "http1.invalid_url"),
])
def test_absolute_form_targets_envoy_refuses(target: bytes, details: str) -> None:
    assert refused(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") == (400, details)


def test_absolute_form_host_header_is_not_checked() -> None:
    (req,), _ = decode(b"GET http://u@b:80/x HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert req.url == "http://u@b:80/x"


def test_an_h2c_upgrade_is_served_as_http11_and_the_next_request_is_decoded() -> None:
    """curl --http2 on an http:// URL asks for h2c: Envoy's codec removes Upgrade,
    HTTP2-Settings and their Connection tokens and serves HTTP/1.1
    (test_envoy_parity.py "h2c-upgrade"); what follows is the next request, also when the
    bytes arrive split."""
    data = (b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    for cut in (len(data), 40, 120):
        dec = RequestDecoder(60 * 1024, 100, 1 << 20)
        dec.feed(data[:cut])
        if cut < len(data):
            dec.feed(data[cut:])
        assert not dec.upgraded
        got = [(r.url, r.upgrade, r.headers) for r in dec.ready]
        assert got == [("/a", False, [("host", "a"), ("connection", "keep-alive")]),
                       ("/b", False, [("host", "a")])]


# -- what llhttp refuses and Envoy 1.40's BalsaParser takes (RequestDecoder._recover) ------
TE_HEAD = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunk_extension_after_data_llhttp_already_handed_on() -> None:
    """The body llhttp decoded before it refused a chunk line (``5\\r\\nhel`` in an
    earlier read) is not handed on twice: the replay skips what on_body already got."""
    (req,), _ = decode(TE_HEAD + b"5\r\nhel", b"lo\r\n2; x=y\r\nok\r\n0\r\n\r\n")
    assert b"".join(req.body) == b"hellook" and req.complete


def test_many_pipelined_requests_needing_the_replay_in_one_read() -> None:
    """Each such request's rest is fed on in _resume's loop, not a call deeper each: a
    read of 2,000 of them is decoded (a recursion would have ended in RecursionError)."""
    one = TE_HEAD + b"2; x=y\r\nok\r\n0\r\n\r\n"
    reqs, dec = decode(one * 2000)
    assert len(reqs) == 2000 and all(b"".join(r.body) == b"ok" for r in reqs)
    assert dec.current is None


def test_long_chunk_extension_one_byte_per_read() -> None:
    """A 20 KB extension a byte per read: its pieces are joined once, at its LF."""
    body = b"2; " + b"x" * 20000 + b"\r\nok\r\n0\r\n\r\n"
    _, dec = decode(TE_HEAD)
    for i in range(len(body)):
        dec.feed(body[i:i + 1])
    (req,) = dec.ready
    assert b"".join(req.body) == b"ok" and req.complete


@pytest.mark.parametrize("line", [b"2;x\ry\r\n", b"2;x\n", b"2x\r\n", b" 2\r\n",
                                  b"1" + b"0" * 16 + b";x\r\n"])
def test_chunk_lines_envoy_refuses_too(line: bytes) -> None:
    assert refused(TE_HEAD + line + b"ok\r\n0\r\n\r\n") == (400, "http1.codec_error")


def test_a_refused_head_is_answered_at_once() -> None:
    """Only the errors _fold_head may cure hold a head until it ends; anything else is
    refused at the byte llhttp refuses (no waiting for a head end that may never come)."""
    assert refused(b"POST /p HTTP/1.1\r\nHost: a\r\nX\x01: b") == (400, "http1.codec_error")
    _, dec = decode(b"POST /p HTTP/1.1\r\nHost: a\r\n \r\nX-B: b")  # held: may be cured
    assert dec.error is None and not dec.ready


def test_replay_keeps_a_bounded_part_of_a_body() -> None:
    """A chunked body's reads are kept for the replay up to 64 KiB past the head limit
    (memory per connection): an Envoy-only chunk line after that much body in other reads
    stays refused; within it, it is taken."""
    strict = b"".join(b"3e8\r\n" + b"a" * 1000 + b"\r\n" for _ in range(140))
    late = TE_HEAD + strict + b"2; x\r\nok\r\n0\r\n\r\n"
    reads = [late[i:i + 1000] for i in range(0, len(late), 1000)]
    assert refused(*reads) == (400, "http1.codec_error")
    early = TE_HEAD + strict[:10 * 1007] + b"2; x\r\nok\r\n0\r\n\r\n"
    (req,), _ = decode(*(early[i:i + 1000] for i in range(0, len(early), 1000)))
    assert b"".join(req.body) == b"a" * 10000 + b"ok" and req.complete


def test_response_chunk_extension_as_envoy_after_reads_of_body() -> None:
    """An upstream response's chunk line with whitespace in its extension, after body
    llhttp already handed on in earlier reads: the body once, in order."""
    got: list[bytes] = []
    dec = ResponseDecoder(False, lambda d: None, got.append)
    for part in (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhe",
                 b"llo\r\n", b"2; x=y\r\nok\r\n0 z\r\n\r\n"):
        dec.feed(part)
    assert b"".join(got) == b"hellook" and dec.complete and not dec.trailing
