"""The seed's demo client (`vasth/simple-client`), in Python.

Every second it GETs http://simple-server-svc.demo-to:18080/common/sauth and prints the
body, or `Get err: <error>` when the request fails, like the Go program:

    for { time.Sleep(time.Second); resp, err := http.Get(url); ... fmt.Println(string(raw)) }

Like Go's default Transport it keeps one idle keep-alive connection and reuses it (which
is why the seed's access log shows the same client port on every line), retries once on
a fresh connection when a reused one turns out closed, and sends Go's request headers
(Host, `User-Agent: Go-http-client/1.1`, `Accept-Encoding: gzip`). Names go through the
standard resolver (getaddrinfo), so /etc/hosts and the pod's resolv.conf apply.

    python3 -m remora.apps.simple_client [--url URL] [--interval 1] [--count N]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.parse

import httptools

DEFAULT_URL = "http://simple-server-svc.demo-to:18080/common/sauth"


class GetError(Exception):
    """A failed request, worded like Go's *url.Error: `Get "URL": <cause>`."""


class ReadAllError(GetError):
    """The headers arrived but the body was cut short (Go: `ReadAll err: unexpected EOF`)."""


class _Response:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.headers_done = False
        self.delimited = False  # Content-Length or chunked; else the body ends at close

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        # llhttp only knows keep-alive until the next message starts: ask it now
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True


class Client:
    """A one-connection HTTP/1.1 client with Go's keep-alive reuse."""

    def __init__(self, url: str, timeout: float | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported URL {url!r} (only http://host[:port]/path)")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authority = parts.netloc
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self.request = (
            f"GET {self.target} HTTP/1.1\r\nHost: {self.authority}\r\n"
            "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
        ).encode("latin-1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _dial(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            server = nameserver()
            where = f" on {_join(server, 53)}" if server else ""
            raise GetError(f'Get "{self.url}": dial tcp: lookup {self.host}{where}: '
                           f"{_lookup_reason(exc)}") from exc
        last: OSError | None = None
        address = ""
        for family, kind, proto, _, sockaddr in infos:
            address = _join(str(sockaddr[0]), int(sockaddr[1]))
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        reason = _os_reason(last) if last else "no addresses"
        raise GetError(f'Get "{self.url}": dial tcp {address}: connect: {reason}')

    def get(self) -> tuple[int, bytes]:
        """One GET; returns (status, body). Raises GetError like http.Get's err."""
        reused = self._sock is not None
        try:
            return self._roundtrip()
        except _Retryable:
            if not reused:
                raise GetError(f'Get "{self.url}": EOF') from None
            return self._roundtrip()  # the idle connection was closed under us; redial

    def _roundtrip(self) -> tuple[int, bytes]:
        if self._sock is None:
            self._sock = self._dial()
        sock = self._sock
        response = _Response()
        got_any = False
        try:
            sock.sendall(self.request)
            while not response.done:
                chunk = sock.recv(65536)
                if not chunk:
                    if not got_any:
                        raise _Retryable
                    if not response.headers_done:
                        raise GetError(f'Get "{self.url}": unexpected EOF')
                    if response.delimited:
                        raise ReadAllError("unexpected EOF")
                    break  # a body delimited by the close ends here

                got_any = True
                response.parser.feed_data(chunk)
        except (_Retryable, GetError):
            self.close()
            raise
        except httptools.HttpParserError as exc:
            self.close()
            raise GetError(f'Get "{self.url}": net/http: HTTP/1.x transport connection '
                           f"broken: malformed HTTP response ({exc})") from exc
        except OSError as exc:
            self.close()
            if not got_any and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _Retryable from exc
            raise GetError(f'Get "{self.url}": {_os_reason(exc)}') from exc
        if not response.keep_alive:
            self.close()
        return response.parser.get_status_code(), b"".join(response.body)


class _Retryable(Exception):
    """The server closed a connection before answering: Go retries idempotent requests."""


RESOLV_CONF = "/etc/resolv.conf"


def nameserver(path: str | None = None) -> str | None:
    """The first nameserver of resolv.conf: Go's resolver names the server it asked
    (`lookup HOST on 10.96.0.10:53: no such host`)."""
    try:
        with open(path or RESOLV_CONF) as conf:
            for line in conf:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1]
    except OSError:
        return None
    return None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _lookup_reason(exc: socket.gaierror) -> str:
    if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
        return "no such host"
    return str(exc.strerror or exc)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "i/o timeout"
    return (exc.strerror or str(exc)).lower()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The seed's demo client (GET once a second).")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds to sleep before each request (default 1, as the seed)")
    parser.add_argument("--count", type=int, default=0, help="stop after N requests (0: never)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="per-request socket timeout in seconds (Go's default: none)")
    args = parser.parse_args(argv)
    client = Client(args.url, args.timeout)
    done = 0
    try:
        while args.count == 0 or done < args.count:
            time.sleep(args.interval)
            done += 1
            try:
                _, body = client.get()
            except ReadAllError as exc:
                print(f"ReadAll err: {exc}", flush=True)
                continue
            except GetError as exc:
                print(f"Get err: {exc}", flush=True)
                continue
            sys.stdout.write(body.decode("utf-8", errors="replace") + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    main()
