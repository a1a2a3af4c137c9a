"""HTTP/1.1 message decoding (httptools/llhttp) and encoding, free of I/O.

``RequestDecoder`` is fed the downstream's bytes and produces ``Request`` objects as their
headers complete (pipelined requests queue up in order); body bytes go to the request's
``sink`` when one is attached (the router's upstream writer) and are buffered otherwise.
``ResponseDecoder`` does the same for one upstream response. Errors carry Envoy's response
code details: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/response_code_details
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

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

    def __init__(self, status: int, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.details = details
        self.body = _REASONS.get(status, "Unknown")


class Sink(Protocol):
    """Where a request body goes once the router is connected upstream."""

    def data(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...
    def congested(self) -> bool: ...
    async def wait(self) -> None: ...


class Request:
    """One downstream request as decoded. Header names lower-case, values as sent."""

    __slots__ = ("body", "body_bytes", "body_limit_hit", "chunked", "complete", "content_length",
                 "headers", "hmap", "keep_alive", "method", "retain", "sink", "upgrade", "url")

    def __init__(self) -> None:
        self.method = ""
        self.url = ""
        self.headers: list[tuple[str, str]] = []
        self.hmap: dict[str, str] = {}
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.content_length: int | None = None
        self.complete = False
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


class RequestDecoder:
    """httptools callbacks -> ``Request`` objects in ``ready`` (pipelining-safe)."""

    def __init__(self, max_header_bytes: int, max_headers: int, buffer_limit: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.buffer_limit = buffer_limit
        self.ready: deque[Request] = deque()
        self.current: Request | None = None  # being decoded (headers or body)
        self.error: CodecError | None = None
        self._header_bytes = 0
        self._url = b""
        self.upgraded = False  # an Upgrade request was decoded: stop parsing HTTP
        self.upgrade_tail = b""

    def feed(self, data: bytes) -> None:
        """Decode DATA; on a protocol error sets ``error`` (and raises it)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # the Upgrade request is complete; the bytes after it belong to the tunnel
            self.upgraded = True
            self.upgrade_tail = bytes(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            self.error = ctx if isinstance(ctx, CodecError) else CodecError(
                400, "http1.codec_error")
            raise self.error from None
        except httptools.HttpParserError as e:
            # Envoy names this one case; every other framing error is http1.codec_error
            details = ("http1.content_length_and_chunked_not_allowed"
                       if "can't be present with" in str(e) else "http1.codec_error")
            self.error = CodecError(400, details)
            raise self.error from None

    # -- llhttp callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        self._header_bytes = 0
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        assert req is not None
        self._count(len(name) + len(value))
        if len(req.headers) >= self.max_headers:
            raise CodecError(431, "http1.too_many_headers")
        n = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        req.headers.append((n, v))
        prev = req.hmap.get(n)
        # Repeated headers fold into one comma-joined value, as Envoy's header map does
        # for lookups (REQ() in the access log prints the joined value).
        req.hmap[n] = v if prev is None else f"{prev},{v}"

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        p = self._parser
        if p.get_http_version() != "1.1":
            raise CodecError(426, "low_version")  # accept_http_10 defaults to false
        req.method = p.get_method().decode("latin-1")
        req.url = self._url.decode("latin-1")
        req.keep_alive = p.should_keep_alive()
        req.upgrade = p.should_upgrade()
        te = req.hmap.get("transfer-encoding")
        req.chunked = te is not None and "chunked" in te.lower()
        cl = req.hmap.get("content-length")
        if cl is not None and not req.chunked:
            req.content_length = int(cl)  # llhttp already rejected a malformed one
        self.ready.append(req)

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
        req = self.current
        assert req is not None
        req.complete = True
        self.current = None
        if req.sink is not None:
            req.sink.end()


class ResponseDecoder:
    """One upstream response. ``on_headers(decoder)`` runs when its headers are complete;
    body bytes go to ``on_data``; ``complete`` is set at the end of the message."""

    __slots__ = ("_head_only", "_parser", "chunked", "complete", "content_length", "headers",
                 "headers_done", "keep_alive", "on_data", "on_headers", "status", "upgrade_tail")

    def __init__(self, head_request: bool, on_headers: Callable[[ResponseDecoder], None],
                 on_data: Callable[[bytes], None]) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_request
        self.on_headers = on_headers
        self.on_data = on_data
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.upgrade_tail = b""

    def feed(self, data: bytes) -> None:
        """Raises httptools.HttpParserError on a malformed response."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:  # 101: the rest is the tunnel's
            self.upgrade_tail = bytes(data[e.args[0]:])
            self.complete = True

    def eof_completes(self) -> bool:
        """At upstream EOF: a response framed by connection close is complete now."""
        return self.headers_done and not self.chunked and self.content_length is None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        p = self._parser
        self.status = p.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            # 100 Continue and friends: drop them, the final response follows
            self.headers = []
            return
        self.keep_alive = p.should_keep_alive()
        for n, v in self.headers:
            if n == "transfer-encoding" and "chunked" in v.lower():
                self.chunked = True
            elif n == "content-length":
                self.content_length = int(v)
        self.headers_done = True
        self.on_headers(self)
        if self._head_only or self.status in (204, 304):
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if not self.complete:
            self.on_data(data)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True
