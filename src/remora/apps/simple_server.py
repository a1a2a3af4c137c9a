"""The seed's demo server (`vasth/simple-server`), in Python.

Listens on :18080, serves only /common/sauth (anything else is Go's ServeMux 404), and for
each request prints exactly what the Go program prints,

    X-Forwarded-For=<first X-Forwarded-For value or empty>, RemoteAddr=<ip:port>

flushed per line so `remora logs` and tests see it at once, then answers with the 60-byte
body `{"code": 0, "status": "fail", "user": {"id": "test_common"}}` and the headers Go's
server writes (text/plain; charset=utf-8 comes from Go's content sniffing of that body).

It is built on asyncio (uvloop when installed) and httptools because it also serves as a
backend for the proxy benchmark: one precomputed response per second of Date, no
per-request formatting beyond the log line.

    python3 -m remora.apps.simple_server [--port 18080] [--host ADDR] [--quiet]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Callable
from typing import TextIO, cast

import httptools

from remora.apps import gohttp

PATH = "/common/sauth"
BODY = b'{"code": 0, "status": "fail", "user": {"id": "test_common"}}'
DEFAULT_PORT = 18080


class _Responses:
    """The sauth answer, rebuilt once per second when Date changes."""

    def __init__(self) -> None:
        self._second = -1
        self._date = ""
        self.ok = b""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = gohttp.http_date(now)
            self.ok = gohttp.response(200, BODY, date=self._date)
        return self._date


class _Connection(asyncio.Protocol):
    """One client connection: httptools drives the callbacks, requests answered in order."""

    def __init__(self, responses: _Responses, log: Callable[[str], None] | None) -> None:
        self._responses = responses
        self._log = log
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._url = b""
        self._xff: str | None = None
        self._has_host = False
        self._header_bytes = 0

    # -- transport events --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = gohttp.format_remote(peer[0], peer[1]) if peer else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Go's mux has no upgrade handling for this path: the request was answered in
            # on_message_complete; anything after the upgrade is not HTTP we serve.
            self._close()
        except httptools.HttpParserError:
            self._fail(gohttp.bad_request())

    def _fail(self, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(payload)
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._xff = None
        self._has_host = False
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > gohttp.MAX_HEADER_BYTES:
            raise httptools.HttpParserError("header too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > gohttp.MAX_HEADER_BYTES:
            self._fail(gohttp.header_too_large())
            raise httptools.HttpParserError("header too large")
        lower = name.lower()
        if lower == b"x-forwarded-for":
            if self._xff is None:  # Header.Get returns the first value
                self._xff = value.decode("latin-1")
        elif lower == b"host":
            self._has_host = True

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1" and not self._has_host:
            self._fail(gohttp.bad_request("missing required Host header"))
            return
        keep_alive = parser.should_keep_alive()
        # Go's chunkWriter.writeHeader: "Connection: close" only for HTTP/1.1+ requests
        # it will close after; an HTTP/1.0 keep-alive request gets "Connection: keep-alive".
        connection: str | None = None
        if not keep_alive:
            connection = "close" if version != "1.0" else None
        elif version == "1.0":
            connection = "keep-alive"
        method = parser.get_method()
        head = method == b"HEAD"
        try:
            url = httptools.parse_url(self._url)
            raw_path = url.path
        except httptools.HttpParserInvalidURLError:
            self._fail(gohttp.bad_request())
            return
        path = (raw_path or b"").decode("latin-1")
        date = self._responses.date()
        if method == b"CONNECT":
            payload = gohttp.not_found(date, connection, head)
        elif gohttp.clean_path(path) != path:
            query = f"?{url.query.decode('latin-1')}" if url.query else ""
            payload = gohttp.redirect(gohttp.clean_path(path) + query, date, connection, head)
        elif path == PATH:
            if self._log is not None:
                self._log(f"X-Forwarded-For={self._xff or ''}, RemoteAddr={self._remote}\n")
            if connection is None and keep_alive and not head:
                payload = self._responses.ok
            else:
                payload = gohttp.response(200, BODY, date=date, connection=connection, head=head)
        else:
            payload = gohttp.not_found(date, connection, head)
        transport.write(payload)
        if not keep_alive:
            self._close()


def _line_writer(out: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        out.write(line)
        out.flush()

    return write


async def start(
    host: str | None = None, port: int = DEFAULT_PORT, out: TextIO | None = sys.stdout,
) -> asyncio.Server:
    """Start serving; HOST None listens on every address family like Go's ":18080"."""
    loop = asyncio.get_running_loop()
    responses = _Responses()
    log = _line_writer(out) if out is not None else None
    return await loop.create_server(
        lambda: _Connection(responses, log), host=host, port=port, reuse_address=True,
        backlog=1024,
    )


async def _serve_forever(host: str | None, port: int, quiet: bool) -> None:
    server = await start(host, port, None if quiet else sys.stdout)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The seed's demo server (prints who called).")
    parser.add_argument("--host", default=None, help="address to bind (default: all, like Go)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--quiet", action="store_true",
                        help="do not print a line per request (benchmark backend)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., None] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_serve_forever(args.host, args.port, args.quiet))
    except OSError as exc:
        # Go prints the listen error and exits 0; a non-zero exit is kinder to callers.
        print(f"listen tcp :{args.port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
