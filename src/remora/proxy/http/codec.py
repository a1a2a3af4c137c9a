"""HTTP/1.1 message decoding (httptools/llhttp) and encoding, free of I/O.

``RequestDecoder`` is fed the downstream's bytes and produces ``Request`` objects as their
headers complete (pipelined requests queue up in order); body bytes go to the request's
``sink`` when one is attached (the router's upstream writer) and are buffered otherwise.
``ResponseDecoder`` does the same for one upstream response. Errors carry Envoy's response
code details: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/response_code_details
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

from remora.native import mypyc_attr
from remora.proxy.http.codec_state import (
    CLIENT,
    DONE,
    END_OF_MESSAGE,
    INFORMATIONAL,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    REQUEST,
    RESPONSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCH_UPGRADE,
    SWITCHED_PROTOCOL,
    ConnectionState,
)
from remora.proxy.http.header_map import INLINE_REQUEST, set_first
from remora.proxy.http.headers import connection_header_rejected, split_absolute

# Envoy's reason phrases (source/common/http/codes.cc CodeUtility::toString); Envoy writes
# its own phrase for every response, also for upstream ones, and "Unknown" otherwise.
_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    203: "Non-Authoritative Information", 204: "No Content", 205: "Reset Content",
    206: "Partial Content", 207: "Multi-Status", 208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    416: "Range Not Satisfiable", 417: "Expectation Failed", 421: "Misdirected Request",
    422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
    426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported", 506: "Variant Also Negotiates",
    507: "Insufficient Storage", 508: "Loop Detected", 510: "Not Extended",
    511: "Network Authentication Required",
}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode())
                 for code, phrase in _REASONS.items()}


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % code


class CodecError(Exception):
    """A downstream protocol error: Envoy answers ``status`` with ``body``, flag DPE,
    RESPONSE_CODE_DETAILS ``details``, and closes the connection."""

    def __init__(self, status: int, details: str, body: str | None = None,
                 flag: str | None = "DPE") -> None:
        super().__init__(details)
        self.status = status
        self.details = details
        self.body = _REASONS.get(status, "Unknown") if body is None else body
        self.flag = flag


# RFC 3986 authority characters as Envoy's HeaderUtility::authorityIsValid accepts them
# (nghttp2's check_authority): unreserved, sub-delims, ":", "[", "]", "@" and "%".
_AUTHORITY_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:[]@%")


_AUTHORITY_RE = re.compile(
    "[" + re.escape("".join(sorted(_AUTHORITY_CHARS))) + "]*")


def authority_is_valid(value: str) -> bool:
    """Envoy refuses a Host such as ``a b``, ``a, evil`` or ``"a`` (400
    http.invalid_authority, checked against Envoy 1.40)."""
    return _AUTHORITY_RE.fullmatch(value) is not None


# Host values authority_is_valid accepted (most connections send one host over and over)
_VALID_HOSTS: set[str] = set()


def request_framing(method: str, hmap: dict[str, str]) -> CodecError | None:
    """Envoy's codec accepts only ``transfer-encoding: chunked`` (any case) and none on a
    CONNECT: anything else is 501 http1.invalid_transfer_encoding (codec_impl.cc, checked
    against Envoy 1.40: ``xchunked`` and ``gzip, chunked`` are both refused)."""
    te = hmap.get("transfer-encoding")
    if te is not None and (te.strip().lower() != "chunked" or method == "CONNECT"):
        return CodecError(501, "http1.invalid_transfer_encoding")
    return None


def _request_parser_error(message: str) -> CodecError:
    """llhttp's error text -> Envoy's answer."""
    if "can't be present with" in message:
        return CodecError(400, "http1.content_length_and_chunked_not_allowed")
    if "Transfer-Encoding" in message:
        return CodecError(501, "http1.invalid_transfer_encoding")
    if message == "Invalid HTTP version":
        # a version of digit.digit other than 1.1 and 1.0 (HTTP/1.2, 1.9, 3.1, 0.5): Envoy
        # answers any of them 426 low_version as it does 1.0 and 2.0 (observed on 1.40)
        return CodecError(426, "low_version")
    return CodecError(400, "http1.codec_error")


# Header names (and methods) as decoded, by their bytes as received: a connection sends the
# same few names again and again, and a lookup costs less than decoding and lower-casing.
# Bounded: names come from peers; once full, new names are decoded each time.
_NAMES: dict[bytes, str] = {}
_METHODS: dict[bytes, str] = {}
_CACHE_MAX = 512


def _header_name(raw: bytes) -> str:
    name = raw.decode("latin-1").lower()
    if len(_NAMES) < _CACHE_MAX:
        _NAMES[raw] = name
    return name


def _method_name(raw: bytes) -> str:
    method = raw.decode("latin-1")
    if len(_METHODS) < _CACHE_MAX:
        _METHODS[raw] = method
    return method


class Sink(Protocol):
    """Where a request body goes once the router is connected upstream."""

    def data(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def congested(self) -> bool: ...
    async def wait(self) -> None: ...


def note_repeated(req: Request, name: str, prev: str, value: str) -> None:
    """REQ's non-inline NAME came again with VALUE (PREV: its values so far, joined)."""
    repeated = req.repeated
    if repeated is None:
        req.repeated = {name: [prev, value]}
    elif name in repeated:
        repeated[name].append(value)
    else:
        repeated[name] = [prev, value]


class Request:
    """One downstream request as decoded. Header names lower-case, values as sent."""

    __slots__ = ("body", "body_bytes", "body_limit_hit", "chunked", "complete", "completed_at",
                 "content_length", "headers", "hmap", "keep_alive", "method", "repeated",
                 "retain", "scheme", "sink",
                 "upgrade", "url")

    def __init__(self) -> None:
        self.method = ""
        self.url = ""
        # an HTTP/2 request's :scheme as the client sent it (None on HTTP/1.1, whose
        # scheme the connection manager works out: headers.request_scheme)
        self.scheme: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.hmap: dict[str, str] = {}
        # the separate values of each non-inline name sent more than once, which Envoy's
        # header matchers see one by one (header_matcher.py); None: none repeated
        self.repeated: dict[str, list[str]] | None = None
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.content_length: int | None = None
        self.complete = False
        # when a body streamed upstream ended (time.monotonic(); 0.0: none streamed), where
        # x-envoy-upstream-service-time counts from
        self.completed_at = 0.0
        self.body: list[bytes] = []  # every byte until a sink is attached; then for retries
        self.body_bytes = 0
        self.body_limit_hit = False  # more than the buffer limit waits for a sink
        self.retain = True  # body holds the whole body so far (a retry can resend it)
        self.sink: Sink | None = None

    def attach(self, sink: Sink, limit: int) -> None:
        """Route the body to SINK from now on (the caller already sent ``body``)."""
        self.sink = sink
        if self.body_bytes > limit:
            self.retain = False
            self.body = []


class _H2cBody:
    """The callbacks of the parser that reads an h2c upgrade request's body: the head
    RequestDecoder.feed puts before it (the request's own framing) is not a request, its
    body and end are the h2c request's; every request after it goes to the decoder as
    from its own parser."""

    __slots__ = ("dec", "done")

    def __init__(self, dec: RequestDecoder) -> None:
        self.dec = dec
        self.done = False

    def on_message_begin(self) -> None:
        if self.done:
            self.dec.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self.done:
            self.dec.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            self.dec.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.done:
            self.dec.on_headers_complete()

    def on_body(self, data: bytes) -> None:
        self.dec.on_body(data)

    def on_message_complete(self) -> None:
        self.done = True
        self.dec.on_message_complete()


def _request_parser(protocol: object) -> httptools.HttpRequestParser:
    """llhttp for a request, as lax as Envoy 1.40's HTTP/1 codec (BalsaParser by default)
    where that changes nothing of the framing: whitespace (SP, HTAB) after a
    chunk size, before its extension or line end (``2 ;x``, ``2\t;x``, ``0 ``), is
    accepted, the size being the hex digits before it (observed on loopback: Envoy
    forwards such a body re-chunked as ``2\r\nok``:
    tests/unit/proxy/http/test_chunk_whitespace_envoy_parity.py). llhttp's default
    answers 400 (``Invalid character in chunk size``). A vertical tab there stays refused
    by both. (Envoy takes more still, which llhttp has no leniency for: whitespace or
    control characters inside an extension, ``2; x=y``, and anything after the size's
    whitespace, ``2 x``; remora refuses those, 400.)"""
    parser = httptools.HttpRequestParser(protocol)
    parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
    return parser


def _response_parser(protocol: object) -> httptools.HttpResponseParser:
    """llhttp for an upstream response, taking whitespace after a chunk size as Envoy
    1.40's codec does (``_request_parser``; observed: Envoy relays ``2 ;x``, ``2<HTAB>;x``
    and ``2 `` as ``2\r\nok``, where llhttp's default fails the response midway)."""
    parser = httptools.HttpResponseParser(protocol)
    parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
    return parser


def _strip_header_htab(data: bytes) -> bytes:
    """DATA, which begins a request (or a response), with the OWS that ends its header
    lines dropped when a header line ends in HTAB (``Transfer-Encoding: chunked<HTAB>``):
    RFC 9110 5.5 OWS, which Envoy 1.40 drops from any value (observed: ``chunked<HTAB>``
    is chunked, forwarded as ``transfer-encoding: chunked``), but llhttp takes as part of
    a Transfer-Encoding value (a request's it refuses, ``Request has invalid
    Transfer-Encoding``; a response's body it reads to the close; other headers' trailing
    OWS it keeps, and on_header strips). Only a head that is whole in
    DATA is touched, so that no body byte is (a head split across reads stays refused)."""
    end = data.find(b"\r\n\r\n")
    start = data.find(b"\r\n") + 2  # the header lines, after the request line
    if end < 0 or _HTAB_OWS.search(data, start, end + 2) is None:
        return data
    return data[:start] + _TRAILING_OWS.sub(b"\r\n", data[start:end + 2]) + data[end + 2:]


_HTAB_OWS = re.compile(rb"\t[ \t]*\r\n")  # trailing OWS with an HTAB in it
# trailing OWS after a line's content only: a line of whitespace alone (obs-fold of
# nothing) is left to llhttp, which refuses it; stripped, it would become the empty line
# that ends the head, and the header lines after it the next request's
_TRAILING_OWS = re.compile(rb"(?<=[^ \t\r\n])[ \t]+\r\n")


class RequestDecoder:
    """httptools callbacks -> ``Request`` objects in ``ready`` (pipelining-safe)."""

    def __init__(self, max_header_bytes: int, max_headers: int, buffer_limit: int) -> None:
        self._parser: _Parser = _request_parser(self)
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.buffer_limit = buffer_limit
        self.ready: deque[Request] = deque()
        self.current: Request | None = None  # being decoded (headers or body)
        self.error: CodecError | None = None
        self._header_bytes = 0
        self._url = b""
        self._url_piece: bytes | None = None  # the URL bytes llhttp gave in this feed
        self._url_at_end = False  # the last feed ended right after URL bytes
        # Bytes received while a request head is incomplete (the request line and headers,
        # complete or not): the size limit applies to these, so a header value that never
        # ends is refused at the limit instead of being buffered (llhttp hands a value over
        # only once its line is complete).
        self._head_received = 0
        self._in_body = False  # the current message's head is complete
        self._head_done_in_feed = False
        # raw head bytes allowed beyond max_header_bytes: the request line and the
        # ": "/CRLF separators, which the precise per-header count leaves out
        self._head_slack = 4096 + 4 * max_headers
        self.upgraded = False  # an Upgrade request was decoded: stop parsing HTTP
        self.upgrade_tail = b""
        self._h2c_stripped = False  # the current request's h2c upgrade was removed
        # such a request's framing header when it has a body (httptools skipped it)
        self._h2c_framing: bytes | None = None
        self._kept: _Kept | None = None  # the bytes _recover replays (_keep)
        self._resuming = False  # in _resume's loop
        # the parser reading an h2c request's body: until it is done, a read that begins
        # with no request under way begins inside that body (no place to replay from)
        self._h2c_body: _H2cBody | None = None

    def feed(self, data: bytes) -> None:
        """Decode DATA; on a protocol error sets ``error`` (and raises it)."""
        self._head_done_in_feed = False
        self._url_piece = None
        # DATA begins between two messages (llhttp's state there is a fresh parser's: a
        # place _recover can replay from)
        fresh = self.current is None
        if fresh and 9 in data:  # an HTAB (an int's test: a memchr)
            data = _strip_header_htab(data)
        try:
            self._parser.feed_data(data)
            if not self._in_body:
                if not self._head_done_in_feed:
                    self._head_received += len(data)
                    if self._head_received > self.max_header_bytes + self._head_slack:
                        raise CodecError(431, "http1.headers_too_large")
                    if self.current is not None:
                        self._check_http09(data)
                        self._keep(data, fresh)  # a head split across reads
            elif self.current is not None and self.current.chunked:
                self._keep(data, fresh)  # a chunked body under way
        except _Resume as r:
            if self._resuming:
                raise  # to _resume's loop
            self._resume(r.rest)
        except CodecError as err:  # (not "e": mypyc types one name by its first except)
            self.error = err
            raise
        except httptools.HttpParserUpgrade as e:
            if self._h2c_stripped:
                # an h2c upgrade served as HTTP/1.1 (on_headers_complete): what follows
                # it is the next request, for a parser without llhttp's upgrade pause
                self._h2c_stripped = False
                rest = bytes(data[e.args[0]:])
                framing = self._h2c_framing
                if framing is None:
                    self._parser = _request_parser(self)
                else:
                    # its body: llhttp reads it as the body of a head of our own with the
                    # request's framing (so chunk sizes, trailers and lengths are checked
                    # as for any request), whose callbacks _H2cBody keeps from the decoder
                    self._h2c_framing = None
                    self._h2c_body = body = _H2cBody(self)
                    self._parser = _request_parser(body)
                    rest = b"POST / HTTP/1.1\r\n" + framing + b"\r\n" + rest
                if rest:
                    self.feed(rest)
                return
            # the Upgrade request is complete; the bytes after it belong to the tunnel
            self.upgraded = True
            self.upgrade_tail = bytes(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, _EmptyUpgrade):
                # as after an upgrade: what follows is never parsed as HTTP; the request
                # is refused (stream.py: 403 upgrade_failed) and its connection closed,
                # so no tunnel carries it either
                self.upgraded = True
                return
            self.error = ctx if isinstance(ctx, CodecError) else CodecError(
                400, "http1.codec_error")
            raise self.error from None
        except httptools.HttpParserError as e:
            try:
                if self._recover(data, fresh, str(e)):
                    return
            except _Resume as r:
                if self._resuming:
                    raise  # to _resume's loop
                self._resume(r.rest)
                return
            except CodecError as ce:
                self.error = ce
                raise
            self.error = _request_parser_error(str(e))
            raise self.error from None

    def _resume(self, rest: bytes) -> None:
        """A _HeldHead or _ChunkedBody is done: REST (a message's first byte on) goes to a
        fresh llhttp, as a read that begins between two messages."""
        # a loop, not a call per message: one read may hold many such requests
        self._resuming = True
        try:
            while True:
                self._parser = _request_parser(self)
                self.current = None  # a held head's request begins again
                if not rest:
                    return
                try:
                    self.feed(rest)
                    return
                except _Resume as r:
                    rest = r.rest
        finally:
            self._resuming = False

    def _keep(self, data: bytes, fresh: bool) -> None:
        """Keep DATA (as llhttp was fed it) for _recover while the current request's head
        is split across reads or its chunked body is under way, from a read that began
        between two messages (FRESH) on; none kept past the head and 64 KiB of body (or
        from a read that began inside another message): the request is then what llhttp
        says (a refusal where Envoy would take what comes later)."""
        req = self.current
        kept = self._kept
        if not isinstance(self._parser, httptools.HttpRequestParser):
            return  # a _HeldHead or _ChunkedBody reads on: nothing to replay
        if fresh and self._h2c_body is not None and not self._h2c_body.done:
            fresh = False
        if kept is not None and kept.req is req:
            kept.size += len(data)
            if kept.size > _KEPT_MAX + self.max_header_bytes:
                self._kept = None
            else:
                kept.parts.append(data)
        else:
            self._kept = _Kept(req, data) if fresh and req is not None else None

    def _recover(self, data: bytes, fresh: bool, message: str) -> bool:
        """llhttp refused DATA: decode it as Envoy 1.40's codec (BalsaParser) does where
        that is laxer and llhttp has no leniency for it (True: taken over). A head with a
        header line of whitespace alone (``X-A: a``, `` <HTAB>``: obs-fold of nothing,
        which Balsa joins to the header before and its trailing OWS trim drops), or a
        ``transfer-encoding: chunked<HTAB>`` split across reads (_HeldHead), and a
        chunked body whose chunk line has whitespace or any other byte but CR in its
        extension (``2; x=y``, ``2 x``, ``2;x<NUL>``) or whose data ends in a bare LF
        (_ChunkedBody); all checked against Envoy 1.40 on loopback. httptools reports no
        offset of an error, so the bytes from the last read that began between two
        messages (_keep) are replayed into a fresh parser to find where the request (or
        its body) begins; nothing of an ordinary request pays for this."""
        req = self.current
        if req is None or self.upgraded or self._h2c_framing is not None:
            return False
        if fresh and self._h2c_body is not None and not self._h2c_body.done:
            fresh = False
        kept = self._kept
        if kept is not None and kept.req is req:
            buf = b"".join(kept.parts) + data
        elif fresh:
            buf = data
        else:
            return False
        self._kept = None
        if self._in_body:
            if not req.chunked:
                return False
            start = _replay_offset(buf, "on_headers_complete")
            if start is None:
                return False
            body = _ChunkedBody(self.on_body, self.on_message_complete, _codec_error,
                                req.body_bytes, self.buffer_limit, self.max_headers)
            self._parser = body
            body.feed_data(buf[start:])
            return True
        # the head: only at what _fold_head can make strict (a line beginning with
        # whitespace, a transfer-encoding with trailing HTAB); any other error is
        # answered at once, not once the head ends
        if message not in _HEAD_RECOVERABLE:
            return False
        start = _replay_offset(buf, "on_message_begin")
        if start is None:
            return False
        held = _HeldHead(self, buf[start - 1:], message)
        self._parser = held
        held.feed_data(b"")
        return True

    @property
    def head_in_progress(self) -> bool:
        """A request has begun (its first byte arrived) and its headers are not complete."""
        return self.current is not None and not self._in_body

    def _check_http09(self, data: bytes) -> None:
        """An HTTP/0.9 request line (no version: ``GET /`` and a line end) is complete
        when its line ends, but llhttp reports nothing until an empty line follows. Envoy
        answers it at once (426, accept_http_10 is off); so do we. llhttp leaves the
        version at 0.0 until a version is parsed, so a line end right after the URL while
        the version is still 0.0 is such a line. Once llhttp has read on past that line
        end (a header line in the same read) it says 0.9 itself."""
        version = self._parser.get_http_version()
        if version == "0.9":
            raise CodecError(426, "low_version")
        if version != "0.0":
            return
        piece = self._url_piece
        if piece is None:  # no URL byte in DATA: did the URL end with the previous read?
            if self._url_at_end and data[:1] in (b"\r", b"\n"):
                raise CodecError(426, "low_version")
            return
        end = data.rfind(piece) + len(piece)
        if data[end:end + 1] in (b"\r", b"\n"):
            raise CodecError(426, "low_version")
        self._url_at_end = end == len(data)

    # -- llhttp callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        self._header_bytes = 0
        self._url = b""
        self._url_at_end = False
        self._head_received = 0
        self._in_body = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if url:
            self._url_piece = url
        self._header_bytes += len(url)  # _count, inlined
        if self._header_bytes > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Once per header, so written for the usual one (callgrind: about 0.5 k fewer
        # instructions per header than with dict.get and a test of the value's last
        # character): the name cache is indexed (a miss raises; cheaper than dict.get's
        # call on the usual hit), the trailing OWS goes in one rstrip (which returns the
        # same str when there is none), and a first-seen name is told by ``in``
        req = self.current
        assert req is not None
        size = self._header_bytes + len(name) + len(value)  # _count, inlined
        self._header_bytes = size
        if size > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")
        if self._in_body:
            # a trailer of a chunked body: never merged into the head that routing, RBAC
            # and the upstream see (Envoy drops request trailers on HTTP/1.1)
            return
        headers = req.headers
        if len(headers) >= self.max_headers:
            raise CodecError(431, "http1.too_many_headers")
        try:
            n = _NAMES[name]
        except KeyError:
            n = _header_name(name)
        # RFC 9110 5.5: OWS around a field value is not part of it; llhttp drops the
        # leading one, Envoy's codec the trailing one too (``Host: a `` is ``a``)
        v = value.decode("latin-1").rstrip(" \t")
        hmap = req.hmap
        if n not in hmap:
            hmap[n] = v
            headers.append((n, v))
            return
        prev = hmap[n]
        if n in INLINE_REQUEST:
            # Envoy's header map holds an inline header (user-agent, host as :authority,
            # x-forwarded-client-cert, ...: header_map.py) once and appends a repeated
            # one's value to it in place (HeaderMapImpl::appendToHeader: an empty value
            # adds nothing, none is delimited from an empty one): the upstream gets one
            # joined line where the first was (checked against Envoy 1.40)
            if v:
                v = f"{prev},{v}" if prev else v
                hmap[n] = v
                set_first(headers, n, v)
        else:
            # any other header repeated stays separate lines on the way up; lookups
            # (REQ() in the access log) see them comma-joined, header matchers each value
            headers.append((n, v))
            hmap[n] = f"{prev},{v}"
            note_repeated(req, n, prev, v)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        # _head_received needs no reset here: it counts only while no body is being
        # received, and on_message_complete resets it before that is true again
        self._in_body = self._head_done_in_feed = True
        p = self._parser
        keep_alive = p.should_keep_alive()
        hmap = req.hmap
        connection = hmap.get("connection")
        # llhttp takes the versions 0.9, 1.0, 1.1 and 2.0, and keeps a request without a
        # Connection header alive only when it is HTTP/1.1 (llhttp_should_keep_alive): the
        # version's text, which httptools formats for each call (about 2.4 k instructions),
        # is asked for only otherwise
        if (not keep_alive or connection is not None) and p.get_http_version() != "1.1":
            raise CodecError(426, "low_version")  # accept_http_10 defaults to false
        raw_method = p.get_method()
        try:
            method = _METHODS[raw_method]
        except KeyError:
            method = _method_name(raw_method)
        req.method = method
        req.url = url = self._url.decode("latin-1")
        req.keep_alive = keep_alive
        # llhttp's upgrade flag (llhttp__before_headers_complete) is set for a CONNECT, or
        # for a request with an Upgrade header (F_UPGRADE, from the header name alone) and
        # a Connection (or Proxy-Connection) token "upgrade": without an Upgrade header
        # it is the method's test, and httptools is asked only otherwise (test_codec_framing)
        upgrade = "upgrade" in hmap
        if upgrade and hmap["upgrade"].lower() == "h2c":
            # Envoy's HTTP/1 codec takes no h2c upgrade (curl --http2 on an http:// URL
            # asks for one, with -d a body too): it removes Upgrade, HTTP2-Settings and
            # their Connection tokens and serves the request as HTTP/1.1, body and all
            # (ServerConnectionImpl::onHeadersCompleteBase, Utility::isH2UpgradeRequest;
            # checked against Envoy 1.40). httptools still ends the message at its head,
            # skips any body and pauses as after an upgrade: feed() then goes on with a
            # fresh parser, which first reads the body (_H2cBody)
            if p.should_upgrade():  # (llhttp pauses only with a Connection: upgrade)
                self._h2c_stripped = True
                if "transfer-encoding" in hmap:
                    self._h2c_framing = b"Transfer-Encoding: chunked\r\n"
                elif hmap.get("content-length", "0") != "0":
                    self._h2c_framing = b"Content-Length: %d\r\n" % int(
                        hmap["content-length"])
            _strip_h2c(req)
            connection = hmap.get("connection")
            upgrade = False
        req.upgrade = is_upgrade = (
            p.should_upgrade() if upgrade else method == "CONNECT")
        if upgrade and not is_upgrade and not hmap["upgrade"] and connection is not None:
            # An Upgrade header with no value (or whitespace alone): llhttp sets its
            # upgrade flag only for a value, Envoy's Utility::isUpgrade asks only that
            # the header be there and Connection carry the token "upgrade". Envoy 1.40
            # then handles it as an upgrade of type "" (no upgrade_config has it): the
            # router's 403 after routing, the connection closed, nothing of the request
            # or what follows it forwarded (observed on loopback: test_desync_fuzz.py,
            # test_empty_upgrade_refused_as_by_envoy). The same here: an upgrade that
            # stream.py refuses, and no more parsing (_EmptyUpgrade, caught in feed)
            req.upgrade = is_upgrade = any(
                t.strip(" \t").lower() == "upgrade" for t in connection.split(","))
        # (``in`` below: a test for a header the usual request lacks costs less than
        # dict.get's call)
        chunked = "transfer-encoding" in hmap
        if chunked:  # request_framing refuses only what has a transfer-encoding
            framing = request_framing(method, hmap)
            if framing is not None:
                raise framing
        if method == "CONNECT" and hmap.get("content-length", "0") != "0":
            # a CONNECT's body is the tunnel: Envoy's codec refuses one announced by a
            # content-length (onHeadersCompleteBase, 400 http1.body_disallowed; checked
            # against Envoy 1.40; a chunked one is refused above)
            raise CodecError(400, "http1.body_disallowed")
        # Envoy's codec skips the check while handling an upgrade, and a CONNECT is one
        if connection is not None and method != "CONNECT" and connection_header_rejected(
                connection, hmap.get("te"), upgrade):
            raise CodecError(400, "http1.connection_header_rejected")
        # an origin-form target (the usual one) starts with "/"; a slice costs less than
        # str.startswith's call
        if url[:1] != "/":
            absolute = "://" in url
            if url[:1] == "*" and method != "OPTIONS":
                # Envoy's codec (ServerConnectionImpl::handlePath) takes a target that
                # does not begin with "/" as a path only for an OPTIONS beginning with "*"
                # (``OPTIONS *``, and whatever follows the "*"); any other method's goes
                # to its absolute-URL parser, which refuses ``*``, ``*ok``, ``*?``: 400
                # http1.invalid_url and the connection closed (llhttp takes them for any
                # method; checked against Envoy 1.40: test_desync_fuzz.py,
                # test_request_targets_refused_as_by_envoy)
                raise CodecError(400, "http1.invalid_url")
        else:
            absolute = False
        if absolute:
            # Envoy's codec parses an absolute-form target and refuses what its URL
            # parser does not take (checked against Envoy 1.40)
            if url.partition("://")[0].lower() not in ("http", "https"):
                raise CodecError(400, "http1.invalid_scheme")
            if split_absolute(url) is None:
                raise CodecError(400, "http1.invalid_url")
        host = hmap.get("host")
        # an absolute-form target's own authority replaces Host, which is not checked then
        if host is not None and not absolute and host not in _VALID_HOSTS:
            if not authority_is_valid(host):
                raise CodecError(400, "http.invalid_authority")
            if len(_VALID_HOSTS) < 1024:  # bounded: hosts come from clients
                _VALID_HOSTS.add(host)
        # An Upgrade (or CONNECT) request has no body on this hop: what follows its head
        # is the tunnel's payload, held until the upstream switches protocols (httptools
        # stops right after the head; Envoy forwards the head only, without
        # content-length or transfer-encoding): chunked and content_length keep Request's
        # defaults then, False and None
        if not is_upgrade:
            if chunked:
                req.chunked = True
            elif "content-length" in hmap:
                # llhttp already rejected a malformed one
                req.content_length = int(hmap["content-length"])
        self.ready.append(req)
        if is_upgrade and not p.should_upgrade():
            raise _EmptyUpgrade  # (an empty Upgrade header's, above)

    def on_body(self, data: bytes) -> None:
        req = self.current
        assert req is not None
        req.body_bytes += len(data)
        sink = req.sink
        if sink is None:
            req.body.append(data)
            if req.body_bytes > self.buffer_limit:
                req.body_limit_hit = True  # the reader waits for the router's sink
            return
        sink.data(data)
        if req.retain:
            if req.body_bytes <= self.buffer_limit:
                req.body.append(data)
            else:
                req.retain = False
                req.body = []

    def on_message_complete(self) -> None:
        if self._h2c_framing is not None:
            return  # httptools skipped the body of an h2c upgrade: _H2cBody reads it
        req = self.current
        assert req is not None
        req.complete = True
        self.current = None
        self._in_body = False
        self._head_received = 0
        self._head_done_in_feed = True  # a boundary: what follows in this read is not
        # counted (one read at most)
        if req.sink is not None:
            req.completed_at = time.monotonic()
            req.sink.end()


class _Feeds(Protocol):
    # (a memoryview too: _replay_offset's prefixes; httptools' feed_data takes any buffer)
    def feed_data(self, data: bytes | memoryview) -> None: ...


class _Parser(Protocol):
    """What RequestDecoder asks of its parser: llhttp's, or a stand-in that decodes a
    head or a chunked body llhttp refused (_HeldHead, _ChunkedBody), which is never
    asked anything but feed_data."""

    def feed_data(self, data: bytes) -> None: ...
    def get_http_version(self) -> str: ...
    def should_keep_alive(self) -> bool: ...
    def should_upgrade(self) -> bool: ...
    def get_method(self) -> bytes: ...


class _EmptyUpgrade(Exception):
    """on_headers_complete decoded an upgrade request whose Upgrade header is empty;
    llhttp does not pause after it as after an upgrade, so this stops it."""


class _Resume(Exception):
    """A _HeldHead or _ChunkedBody is done; ``rest``: the bytes after it, for llhttp."""

    def __init__(self, rest: bytes) -> None:
        super().__init__()
        self.rest = rest


class _Kept:
    """The bytes of reads RequestDecoder._keep keeps for ``req``."""

    __slots__ = ("parts", "req", "size")

    def __init__(self, req: Request, data: bytes) -> None:
        self.req = req
        self.parts = [data]
        self.size = len(data)


def _codec_error() -> CodecError:
    return CodecError(400, "http1.codec_error")


def _response_error() -> ResponseError:
    return ResponseError("chunked body")


# the most of a chunked body's reads kept for a replay (RequestDecoder._keep,
# ResponseDecoder._keep_body): memory per connection, not per byte of body
_KEPT_MAX = 64 * 1024


# (a Python class when compiled by mypyc: it sets its callback by name, and a native
# class has no attributes but its declared ones)
@mypyc_attr(native_class=False)
class _Count:
    """A parser's callbacks that count one event, and the body bytes (_replay_offset)."""

    def __init__(self, event: str) -> None:
        self.n = 0
        self.body = 0
        setattr(self, event, self._hit)

    def _hit(self) -> None:
        self.n += 1

    def on_body(self, data: bytes) -> None:
        self.body += len(data)


def _count(buf: bytes | memoryview, event: str,
           parser_for: Callable[[object], _Feeds] | None = None) -> _Count | None:
    counter = _Count(event)
    parser = (parser_for or _request_parser)(counter)
    try:
        parser.feed_data(buf)
    except httptools.HttpParserUpgrade:
        return None  # an upgrade before: nothing to replay through
    except httptools.HttpParserError:
        pass  # where the decoder's parser failed: every event before it counted
    return counter


def _replay_offset(buf: bytes, event: str,
                   parser_for: Callable[[object], _Feeds] | None = None) -> int | None:
    """How many bytes of BUF (read from a message's start, as the decoder's llhttp was
    fed them) a fresh llhttp reads before its last EVENT (``on_message_begin``: the
    current request's first byte is the last one read; ``on_headers_complete``: its
    body begins right after). httptools reports no offsets, so found by bisection."""
    whole = _count(buf, event, parser_for)
    if whole is None or not whole.n:
        return None
    total = whole.n
    view = memoryview(buf)  # (each prefix parsed only up to where llhttp fails)
    lo, hi = 1, len(buf)
    while lo < hi:
        mid = (lo + hi) // 2
        # (a memoryview typed as one: compiled by mypyc, a cast to bytes is checked)
        part = _count(view[:mid], event, parser_for)
        if part is None:
            return None
        if part.n >= total:
            hi = mid
        else:
            lo = mid + 1
    return lo


# llhttp's errors (strict) at a head _fold_head may make strict
_HEAD_RECOVERABLE = frozenset({"Unexpected whitespace after header value",
                               "Request has invalid `Transfer-Encoding`"})
_WS_ONLY_LINE = re.compile(rb"(?<=[^\r\n][\r]\n)(?:[ \t]+\r\n)+")


def _fold_head(head: bytes) -> bytes:
    """HEAD (a request line and header lines to the empty line) as Envoy 1.40's
    BalsaParser reads it where llhttp is stricter: a header line of SP/HTAB alone after
    a header line is obs-fold of nothing, joined to that header, whose trailing OWS
    goes (``X-A: a``, `` <HTAB>`` is ``x-a: a``; observed: forwarded without it, the
    header after it a header, the request framed by the headers as sent); then
    _strip_header_htab's trailing HTAB OWS. Such a line right after the request line
    stays (llhttp and Envoy both refuse it), and so does obs-fold with text (`` b``,
    which Envoy joins as ``a b`` and llhttp refuses)."""
    # from the first header line on: the lookbehind finds no line before that one, so
    # a line of whitespace alone right after the request line is left
    line_end = head.find(b"\r\n") + 2
    return _strip_header_htab(head[:line_end] + _WS_ONLY_LINE.sub(b"", head[line_end:]))


class _HeldHead:
    """A request head llhttp refused at a header line that Envoy takes (_fold_head): its
    bytes are held until the head ends, then fed to a fresh llhttp made strict."""

    __slots__ = ("dec", "message", "parts", "size", "tail")

    def __init__(self, dec: RequestDecoder, buf: bytes, message: str) -> None:
        self.dec = dec
        self.parts = [buf]  # the head's bytes so far (joined once it ends)
        self.size = len(buf)
        self.tail = b""  # the last bytes before a read, where its head end may begin
        self.message = message  # llhttp's error

    def feed_data(self, data: bytes) -> None:
        if data:
            self.parts.append(data)
            self.size += len(data)
        window = self.tail + self.parts[-1]
        if b"\r\n\r\n" not in window:
            self.tail = window[-3:]
            dec = self.dec
            if self.size > dec.max_header_bytes + dec._head_slack:
                raise CodecError(431, "http1.headers_too_large")
            return
        buf = b"".join(self.parts)
        end = buf.find(b"\r\n\r\n")
        head = buf[:end + 4]
        fixed = _fold_head(head)
        if fixed == head:
            # nothing Envoy takes and llhttp refuses: llhttp's refusal stands
            raise _request_parser_error(self.message)
        raise _Resume(fixed + buf[end + 4:])

    def get_http_version(self) -> str:
        return "1.1"  # (RequestDecoder._check_http09: the request line was read)

    def should_keep_alive(self) -> bool:
        return False

    def should_upgrade(self) -> bool:
        return False

    def get_method(self) -> bytes:
        return b""


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")
_TRAILER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")
_SIZE, _DATA, _DATA_END, _TRAILERS = range(4)


class _ChunkedBody:
    """A chunked request body as Envoy 1.40's BalsaParser frames it, where llhttp
    refused it (RequestDecoder._recover), from its first byte: a chunk line is hex
    digits and, after an SP, HTAB or ";", anything but CR up to its CRLF (``2; x=y``,
    ``2 x``, ``2;x<NUL>``; a bare LF or a lone CR in it, ``2x``, ``2=``, `` 2`` and a
    size of 2^64 or more are 400); a chunk's data ends in CRLF or a bare LF (``okXY``
    is 400); the trailer lines (each ``name:value``, or whitespace alone after one)
    end at an empty line, CRLF or LF. All observed on Envoy 1.40 over loopback. The
    first SKIP data bytes are the ones llhttp already handed on (on_body)."""

    __slots__ = ("_refuse", "cr", "left", "line", "line_size", "max_line", "max_trailers",
                 "on_body", "on_end", "skip", "state", "trailers")

    def __init__(self, on_body: Callable[[bytes], None], on_end: Callable[[], None],
                 refuse: Callable[[], Exception], skip: int, max_line: int,
                 max_trailers: int) -> None:
        self.on_body = on_body
        self.on_end = on_end  # the message ended (on_message_complete)
        self._refuse = refuse  # the error for what Envoy refuses
        self.skip = skip
        self.max_line = max_line
        self.max_trailers = max_trailers
        self.state = _SIZE
        # a chunk or trailer line's pieces so far, joined at its LF (_DATA_END: a CR seen)
        self.line: list[bytes] = []
        self.line_size = 0
        self.cr = False  # the line's last byte so far is a CR
        self.left = 0  # _DATA: bytes to come
        self.trailers = 0  # trailer lines so far

    def feed_data(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            state = self.state
            if state == _DATA:
                take = min(self.left, n - pos)
                chunk = data[pos:pos + take]
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = _DATA_END
                if self.skip:
                    cut = min(self.skip, len(chunk))
                    self.skip -= cut
                    chunk = chunk[cut:]
                if chunk:
                    self.on_body(chunk)
            elif state == _DATA_END:
                c = data[pos]
                pos += 1
                if c == 10:  # LF, after CR or bare
                    self.state = _SIZE
                    self.cr = False
                elif c == 13 and not self.cr:
                    self.cr = True
                else:
                    raise self._refuse()
            else:
                nl = data.find(b"\n", pos)
                piece = data[pos:n if nl < 0 else nl]
                if piece and (self.cr or b"\r" in piece[:-1]):  # a lone CR
                    raise self._refuse()
                if nl < 0:
                    self.line_size += len(piece)
                    if self.line_size > self.max_line:
                        raise self._refuse()
                    if state == _SIZE and piece:
                        self._size_prefix(b"".join(self.line) + piece if self.line
                                          else piece)
                    self.line.append(piece)
                    self.cr = piece[-1:] == b"\r"
                    return
                pos = nl + 1
                if self.line:
                    self.line.append(piece)
                    line = b"".join(self.line)
                    self.line = []
                else:
                    line = piece
                self.line_size = 0
                self.cr = False
                if state == _SIZE:
                    self._size_line(line)
                elif self._trailer_line(line):
                    if self.skip:
                        raise self._refuse()  # llhttp handed on more than there was
                    self.on_end()
                    raise _Resume(data[pos:])

    def _size_prefix(self, head: bytes) -> None:
        """HEAD, a chunk line's first bytes (no LF yet), is refused as soon as it cannot
        begin one: Envoy 1.40's BalsaParser answers 400 at a first byte that is no hex
        digit (``x``, ``;``, SP, a CR: an empty size) or at a byte after the digits that is
        none of CR, SP, HTAB, ";" (``2=``), without waiting for the line's end (observed
        on loopback, differential fuzz seed 23 x 1500: ``ok`` LF CR, then nothing; remora
        waited for the rest; test_desync_fuzz.py test_chunk_line_refused_at_once_as_by_envoy)."""
        m = _CHUNK_SIZE.match(head)
        if m is None:
            raise self._refuse()
        end = m.end()
        if end < len(head) and head[end] not in (13, 32, 9, 59):
            raise self._refuse()

    def _size_line(self, line: bytes) -> None:
        if line[-1:] != b"\r":  # a bare LF ends no chunk line (Envoy: 400)
            raise self._refuse()
        m = _CHUNK_SIZE.match(line)
        if m is None:
            raise self._refuse()
        after = line[m.end():m.end() + 1]
        if after not in (b"\r", b" ", b"\t", b";"):
            raise self._refuse()
        size = int(m.group(), 16)
        if size >= 1 << 64:
            raise self._refuse()
        if size:
            self.left = size
            self.state = _DATA
        else:
            self.state = _TRAILERS

    def _trailer_line(self, line: bytes) -> bool:
        """True at the empty line that ends the body."""
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line:
            return True
        if self.trailers and not line.strip(b" \t"):
            return False  # obs-fold of nothing after a trailer
        if _TRAILER.fullmatch(line) is None:
            raise self._refuse()
        self.trailers += 1
        if self.trailers > self.max_trailers:
            raise self._refuse()
        return False

    def get_http_version(self) -> str:
        return "1.1"

    def should_keep_alive(self) -> bool:
        return True

    def should_upgrade(self) -> bool:
        return False

    def get_method(self) -> bytes:
        return b""

    def get_status_code(self) -> int:
        return 0


class ResponseError(Exception):
    """The upstream's response is malformed (Envoy: protocol error, 502 UPE before the
    response started, upstream_cx_protocol_error)."""


_ENDED = frozenset({DONE, MUST_CLOSE, SWITCHED_PROTOCOL})
RESPONSE_ENDED = _ENDED  # the SERVER states in which a response is complete

# Envoy's HTTP/1 client codec limits (source/common/http/http1/codec_impl.h): response
# headers up to MAX_RESPONSE_HEADERS_KB = 80 KiB ("the vanilla http_parser behaviour"), and
# at most the cluster's common_http_protocol_options.max_headers_count (default 100,
# DEFAULT_MAX_HEADERS_COUNT) header lines; more is a protocol error, 502 UPE (observed on
# Envoy 1.40: 80 KB of headers relayed, 100 KB and 101 lines refused)
MAX_RESPONSE_HEADER_BYTES = 80 * 1024
MAX_RESPONSE_HEADERS = 100


def _strip_h2c(req: Request) -> None:
    """REQ without its h2c upgrade: no Upgrade or HTTP2-Settings header, and no
    ``upgrade``/``http2-settings`` token in Connection (the header goes when none is
    left), as Envoy's Utility::removeConnectionUpgrade leaves it."""
    hmap = req.hmap
    gone = ("upgrade", "http2-settings")
    kept: list[tuple[str, str]] = []
    connection: list[str] = []
    for n, v in req.headers:
        if n in gone:
            continue
        if n == "connection":
            tokens = [t.strip() for t in v.split(",")]
            v = ", ".join(t for t in tokens if t and t.lower() not in gone)
            if not v:
                continue
            connection.append(v)
        kept.append((n, v))
    req.headers[:] = kept
    for n in gone:
        hmap.pop(n, None)
    if req.repeated is not None:  # the values matchers see one by one (header_matcher.py)
        for n in (*gone, "connection"):
            req.repeated.pop(n, None)
    if connection:
        hmap["connection"] = ",".join(connection)
    else:
        hmap.pop("connection", None)


def _relaxed_head(buf: bytes) -> bytes | None:
    """BUF (a response from its first byte) with the line endings and folds Envoy's
    parser tolerates in a RESPONSE head made strict: a bare LF ends a line as CRLF does,
    a CR inside a line is dropped, and an obs-fold line (leading SP or HTAB) joins the
    line before it with its own leading whitespace (the line break alone is dropped:
    ``x-a: a`` + `` b`` is ``x-a: a b``, + ``<HTAB>b`` is ``x-a: a<HTAB>b``, observed on
    Envoy 1.40 over fresh upstream connections). Interim 1xx heads are
    done the same way up to the final one. None while a head is incomplete. Anything
    else (a NUL or another control character) is left for the strict parser to refuse."""
    out: list[bytes] = []
    pos = 0
    while True:
        lines: list[bytes] = []
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                return None
            line = buf[pos:nl]
            pos = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if b"\r" in line:  # a CR inside a line: Envoy drops it (``a\rb`` is ``ab``)
                line = line.replace(b"\r", b"")
            if not line:
                break
            if len(lines) > 1 and line[:1] in (b" ", b"\t"):
                lines[-1] += line
            else:
                lines.append(line)
        out.append(b"\r\n".join(lines) + b"\r\n\r\n")
        code = lines[0][9:12] if lines else b""
        if not (code[:1] == b"1" and code != b"101"):
            return b"".join(out) + buf[pos:]


class _RelaxedHead:
    """Stands in for a response decoder's parser once the strict one refused the head
    (ResponseDecoder.feed): collects the head's bytes until ``_relaxed_head`` can make
    it strict, then feeds that to a new strict parser, which takes over. Costs nothing
    on a response the strict parser decodes."""

    __slots__ = ("buf", "decoder")

    def __init__(self, decoder: ResponseDecoder, buf: bytes) -> None:
        self.decoder = decoder
        self.buf = buf

    def feed_data(self, data: bytes) -> None:
        buf = self.buf = self.buf + data
        fixed = _relaxed_head(buf)
        if fixed is None:
            return  # the head goes on in the next read
        dec = self.decoder
        parser = dec._parser = _response_parser(dec)
        try:
            parser.feed_data(fixed)
        except httptools.HttpParserUpgrade as e:
            # the tunnel's first bytes as an offset into DATA (they are its last ones)
            raise httptools.HttpParserUpgrade(
                max(0, len(data) - (len(fixed) - e.args[0]))) from None

    def get_status_code(self) -> int:
        return 0

    def should_keep_alive(self) -> bool:
        return False


class ResponseDecoder:
    """One upstream response, framed by RFC 9112 section 6.3: no body after HEAD, 1xx,
    204 and 304; otherwise chunked, content-length or the connection's close.
    ``on_headers(decoder)`` runs when its headers are complete; body bytes go to
    ``on_data``. The SERVER side of the connection's ``ConnectionState`` (codec_state.py)
    says where the response is: the head and each end of message are events on it, an
    event the table refuses is a protocol error, and ``complete`` means the server role
    reached DONE, MUST_CLOSE or SWITCHED_PROTOCOL. Whatever arrives after the message is
    never decoded: it sets ``trailing`` and disables keep-alive (the connection must not be
    reused, and nothing of it reaches any client), as Envoy closes an upstream connection
    that sends anything outside an active request."""

    __slots__ = ("_body_kept", "_body_kept_size", "_head_bytes", "_head_only", "_head_pending",
                 "_head_raw", "_max_header_bytes", "_parser", "_relaxed", "chunked",
                 "content_length", "headers", "headers_done", "on_data", "on_headers",
                 "parser_idle", "state", "status", "trailing", "upgrade_tail")

    def __init__(self, head_request: bool, on_headers: Callable[[ResponseDecoder], None],
                 on_data: Callable[[bytes], None],
                 max_header_bytes: int = MAX_RESPONSE_HEADER_BYTES,
                 state: ConnectionState | None = None) -> None:
        self._parser: httptools.HttpResponseParser | _RelaxedHead | _ChunkedBody = (
            _response_parser(self))
        self._head_only = head_request
        self._max_header_bytes = max_header_bytes
        self._head_bytes = 0  # header names and values decoded so far
        self._head_raw = 0  # bytes received while the head is incomplete
        self._head_pending = b""  # those bytes, for _RelaxedHead
        self._relaxed = False  # the head was made strict once (_RelaxedHead)
        # the reads of a chunked body under way (_recover_body), with the header list of
        # the response they belong to (reset makes a new one: nothing to clear there)
        self._body_kept: tuple[list[tuple[str, str]], list[bytes]] | None = None
        self._body_kept_size = 0
        if state is None:
            # decoding on its own: the request it answers was sent whole
            state = ConnectionState()
            state.process_event(CLIENT, REQUEST)
            state.process_event(CLIENT, END_OF_MESSAGE)
        self.state = state
        self.on_headers = on_headers
        self.on_data = on_data
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_done = False  # the final response's head was decoded
        self.trailing = False
        self.chunked = False
        self.content_length: int | None = None
        self.upgrade_tail = b""
        # llhttp ended its last message (on_message_complete) and stands at the start of
        # the next: the parser may decode the connection's next response (reset)
        self.parser_idle = True

    def reset(self, head_request: bool, on_headers: Callable[[ResponseDecoder], None],
              on_data: Callable[[bytes], None]) -> None:
        """Decode the next response of the same pooled connection (its state back at IDLE
        for a new cycle) with this decoder and its parser, instead of a new pair per
        request. Only when ``parser_idle``: a parser that ended its message where llhttp
        sees one end (not at a HEAD response's head, whose declared body llhttp would
        still wait for) reads the next one from its first byte."""
        assert self.parser_idle
        self._head_only = head_request
        self._head_bytes = 0
        self._head_raw = 0
        self._head_pending = b""
        self._relaxed = False
        self.on_headers = on_headers
        self.on_data = on_data
        self.status = 0
        self.headers = []
        self.headers_done = False
        self.chunked = False
        self.content_length = None

    def detach(self) -> None:
        """Forget the callbacks of the request it decoded (while idle in the pool, the
        connection keeps nothing of that request alive)."""
        self.on_headers = _no_headers
        self.on_data = _no_data

    @property
    def complete(self) -> bool:
        return self.state.server in _ENDED

    @property
    def keep_alive(self) -> bool:
        return self.state.keep_alive

    def _trailing(self) -> None:
        self.trailing = True
        self.state.process_keep_alive_disabled()

    def feed(self, data: bytes) -> None:
        """Raises ResponseError on a malformed response (before it completed)."""
        state = self.state
        if state.server in _ENDED:
            self._trailing()
            return
        if not self._head_raw:
            if not self.headers_done and 9 in data:
                # a head's first read with an HTAB: llhttp takes ``transfer-encoding:
                # chunked<HTAB>`` for a body read to the close (no error), Envoy for
                # chunked
                data = _strip_header_htab(data)
        elif (not self.headers_done and 10 in data and not self.status and not self._relaxed
              and isinstance(self._parser, httptools.HttpResponseParser)):
            # a head split across reads, maybe ending in this one: with such an HTAB in
            # it, read again from its first byte by a fresh parser, made strict as above
            # (Envoy frames ``chunked<HTAB>`` as chunked however the head came)
            buf = self._head_pending + data
            if 9 in buf and b"\r\n\r\n" in buf[-len(data) - 3:]:
                strict = _strip_header_htab(buf)
                if strict != buf:
                    self._parser = _response_parser(self)
                    self._head_raw = 0
                    self._head_pending = b""
                    self._head_bytes = 0
                    self.headers = []  # decoded again
                    return self.feed(strict)
        try:
            self._parser.feed_data(data)
        except _Resume as r:  # _ChunkedBody ended the body
            self._parser = _response_parser(self)
            if r.rest:
                self._trailing()
        except ResponseError:  # _ChunkedBody refused the body
            state.process_error(SERVER)
            raise
        except httptools.HttpParserUpgrade as e:  # a 101 (or CONNECT 2xx): end of HTTP
            self.upgrade_tail = bytes(data[e.args[0]:])
            # llhttp ended the message already (on_message_complete); a 101 nobody
            # proposed leaves HTTP too, and the connection can carry nothing else
            if state.server == SEND_BODY:
                state.process_event(SERVER, END_OF_MESSAGE)
            if state.server != SWITCHED_PROTOCOL:
                state.process_keep_alive_disabled()
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _Stop):
                return  # the response ended and more followed: trailing is set
            if state.server in _ENDED:
                self._trailing()
                return
            state.process_error(SERVER)
            raise ResponseError(str(e.__context__ or e)) from None
        except httptools.HttpParserError as e:
            if state.server in _ENDED:
                self._trailing()  # garbage after a complete response
                return
            if self.headers_done and self.chunked and not self._relaxed:
                try:
                    if self._recover_body(data):
                        return
                except ResponseError:
                    state.process_error(SERVER)
                    raise
            if not self.headers_done and not self._relaxed:
                # Envoy's parser takes a response head with bare LF line ends or obs-fold
                # lines (a request's stays refused): the head again, made strict
                # (_relaxed_head), once its bytes are all there
                buf = self._head_pending + data
                fixed = _relaxed_head(buf)
                if fixed is None or fixed != buf:
                    self._relaxed = True
                    self._parser = _RelaxedHead(self, b"")
                    self._head_pending = b""
                    self._head_raw = 0  # BUF is counted again
                    self._head_bytes = 0
                    self.headers = []  # decoded again
                    return self.feed(buf)
            state.process_error(SERVER)
            raise ResponseError(str(e)) from None
        if not self.headers_done:
            # bytes of a head that has not ended: the limit applies to what was received,
            # also to a header line that never ends (4 KiB for the status line and the
            # separators the decoded count leaves out)
            self._head_raw += len(data)
            self._head_pending += data
            if self._head_raw > self._max_header_bytes + 4096:
                state.process_error(SERVER)
                raise ResponseError("response headers too large")
        elif self.chunked:
            self._keep_body(data)

    def _keep_body(self, data: bytes) -> None:
        """Keep DATA, a read of a chunked response whose head is complete, for
        _recover_body (up to 64 KiB: past that, llhttp's refusal stands)."""
        if not isinstance(self._parser, httptools.HttpResponseParser):
            return  # _ChunkedBody reads on: nothing to replay
        kept = self._body_kept
        if kept is None or kept[0] is not self.headers:
            self._body_kept = (self.headers, [data])
            self._body_kept_size = len(data)
        elif kept[1]:
            self._body_kept_size += len(data)
            if self._body_kept_size <= _KEPT_MAX:
                kept[1].append(data)
            else:
                kept[1].clear()  # too much: no more recovery for this response

    def _recover_body(self, data: bytes) -> bool:
        """llhttp refused DATA in a chunked response's body: frame it as Envoy 1.40's
        codec does, from the body's first byte (_ChunkedBody; observed: Envoy relays
        ``2; x=y`` as ``2\r\nok``), the response's bytes replayed into a fresh llhttp
        to find where the body begins and how much of it llhttp handed on."""
        kept = self._body_kept
        if kept is None or kept[0] is not self.headers:
            parts = [self._head_pending, data]
        elif not kept[1]:
            return False
        else:
            parts = [self._head_pending, *kept[1], data]
        self._body_kept = None
        buf = b"".join(parts)
        start = _replay_offset(buf, "on_headers_complete", _response_parser)
        whole = _count(buf, "on_headers_complete", _response_parser)
        if start is None or whole is None:
            return False
        body = _ChunkedBody(self.on_body, self.on_message_complete, _response_error,
                            whole.body, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS)
        self._parser = body
        try:
            body.feed_data(buf[start:])
        except _Resume as r:
            self._parser = _response_parser(self)
            if r.rest:
                self._trailing()
        return True

    @property
    def head_started(self) -> bool:
        """Some bytes of the response's head arrived (and the head did not end)."""
        return self._head_raw > 0

    def eof_completes(self) -> bool:
        """At upstream EOF: a response framed by connection close is complete now."""
        return self.headers_done and not self.chunked and self.content_length is None

    def end_at_eof(self) -> None:
        """The upstream closed after a response framed by its close: it is complete."""
        state = self.state
        state.process_event(SERVER, END_OF_MESSAGE)
        state.process_keep_alive_disabled()

    def on_message_begin(self) -> None:
        self.parser_idle = False
        if self.state.server in _ENDED:
            self._trailing()  # a second, unsolicited response
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        # Lines after the response ended (a HEAD response's trailers, decoded in the same
        # read) are none of its headers. It can have ended only once its head was decoded
        # (feed and on_message_begin decode nothing after an end), so the usual header,
        # one of a head, is told by headers_done alone (0.17 k instructions fewer per
        # header, callgrind)
        if self.headers_done and self.state.server in _ENDED:
            return
        size = self._head_bytes + len(name) + len(value)
        self._head_bytes = size
        if size > self._max_header_bytes:
            raise ResponseError("response headers too large")
        try:  # the name cache indexed: a hit costs less than dict.get's call
            n = _NAMES[name]
        except KeyError:
            n = _header_name(name)
        self.headers.append((n, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        state = self.state
        if state.server in _ENDED:
            return
        p = self._parser
        self.status = status = p.get_status_code()
        headers = self.headers
        if len(headers) > MAX_RESPONSE_HEADERS:
            raise ResponseError("too many response headers")
        if not 200 <= status <= 999:  # one test on the usual response
            if not 100 <= status <= 999:  # three digits, 1xx and up (Envoy: 099 -> 502)
                raise ResponseError(f"status {status}")
            _no_body_framing(headers)
            if status != 101:
                # 100 Continue and friends: drop them, the final response follows
                state.process_event(SERVER, INFORMATIONAL)
                self.headers = []
                self._head_bytes = 0
                return
        for n, v in headers:
            if n == "transfer-encoding":
                # as for requests, Envoy understands exactly "chunked" and nothing else
                if v.strip().lower() != "chunked" or self.chunked:
                    raise ResponseError(f"transfer-encoding {v!r}")
                self.chunked = True
            elif n == "content-length":
                self.content_length = int(v)
        if status == 204:
            _no_body_framing(headers)
        if status == 101 and state.pending_switch == SWITCH_UPGRADE:
            state.process_event(SERVER, INFORMATIONAL, SWITCH_UPGRADE)  # the tunnel's
        elif (state.server == SEND_RESPONSE and state.pending_switch is None
              and state.keep_alive and state.client != MIGHT_SWITCH_PROTOCOL):
            # ConnectionState.process_response_head's one move, inlined (a call costs
            # about 0.3 k instructions per response, callgrind)
            state.server = SEND_BODY
        else:
            state.process_event(SERVER, RESPONSE)
        if not p.should_keep_alive():
            state.process_keep_alive_disabled()
        self.headers_done = True
        self.on_headers(self)
        if (self._head_only or status in (204, 304)) and state.server == SEND_BODY:
            state.process_response_end()  # process_event(SERVER, END_OF_MESSAGE)

    def on_body(self, data: bytes) -> None:
        if self.state.server in _ENDED:
            self._trailing()  # e.g. a body after a HEAD response
            raise _Stop
        self.on_data(data)

    def on_message_complete(self) -> None:
        state = self.state
        if self.headers_done:
            self.parser_idle = True  # not after an interim 1xx: the final response follows
            if state.server == SEND_BODY:
                if (state.pending_switch is None and state.keep_alive
                        and state.client != MIGHT_SWITCH_PROTOCOL):
                    # ConnectionState.process_response_end's one move, inlined (as above)
                    state.server = DONE
                else:
                    state.process_event(SERVER, END_OF_MESSAGE)


def _no_body_framing(headers: list[tuple[str, str]]) -> None:
    """Envoy's ClientConnectionImpl::onHeadersCompleteBase for a 1xx or 204 response:
    a transfer-encoding, or a content-length other than 0, is a protocol error (502 UPE
    upstream_reset_before_response_started{protocol_error}, observed on Envoy 1.40); a
    zero one is dropped (encode_headers does that)."""
    for n, v in headers:
        if n == "transfer-encoding" or (n == "content-length" and v.strip() != "0"):
            raise ResponseError(f"{n} on a 1xx or 204 response")


def _no_headers(decoder: ResponseDecoder) -> None:
    pass


def _no_data(data: bytes) -> None:
    pass


class _Stop(Exception):
    """Raised from a parser callback to stop decoding after the response ended."""
