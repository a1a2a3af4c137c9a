"""The peers of the TLS half-close tests (test_tls_half_close*.py): backends that read to
the end of their input and only then answer, and clients that end their input and read the
answer, over TLS with close_notify as the end, as Envoy's SslSocket sends it, or plain
with a FIN. Each tells how the other side's input ended."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, static_cluster

TIMEOUT = 3.0  # what a side waits for the end of its input before giving up ("timeout")


def server_context(certs: Path, client_certs: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    if client_certs:
        ctx.load_verify_locations(certs / "root-cert.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(certs: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(certs / "root-cert.pem")
    ctx.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    return ctx


def answer(data: bytes) -> bytes:
    return b"answer to %d bytes: " % len(data) + data[::-1]


class TlsHalfClose:
    """A TLS client or server side over a blocking socket through memory BIOs, so it can
    send its close_notify and go on reading (``ssl.SSLSocket.unwrap`` waits for the
    peer's)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server,
                                server_hostname=None if server else "backend")
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionError("EOF in the handshake") from None
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return bool(data)

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def close_notify(self) -> None:
        """Our close_notify, the socket left open both ways (nothing is waiting in the
        incoming BIO, so unwrap's second SSL_shutdown only finds it empty)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.unwrap()
        self._flush()

    def read_to_end(self) -> tuple[bytes, str]:
        """Everything until the peer's end: (data, "close_notify" / "fin" (a TCP EOF
        without one) / "timeout" / "reset")."""
        got = b""
        try:
            while True:
                try:
                    chunk = self.obj.read(65536)
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._fill():
                        return got, "fin"
                    continue
                except ssl.SSLZeroReturnError:
                    return got, "close_notify"
                except ssl.SSLEOFError:
                    return got, "fin"
                if not chunk:
                    return got, "close_notify"
                got += chunk
        except TimeoutError:
            return got, "timeout"
        except ConnectionResetError:
            return got, "reset"


def read_plain(sock: socket.socket) -> tuple[bytes, str]:
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got, "fin"
            got += chunk
    except TimeoutError:
        return got, "timeout"
    except ConnectionResetError:
        return got, "reset"


def tls_backend(ctx: ssl.SSLContext, ends: list[tuple[int, str]]) -> socket.socket:
    """A listening TLS backend: reads until its input ends (ENDS gets how many bytes came
    and how it ended), answers, sends its close_notify and closes."""
    from tests.unit.proxy.loopback_proxies import thread_server

    def handle(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            side = TlsHalfClose(conn, ctx, server=True)
            data, end = side.read_to_end()
            ends.append((len(data), end))
            if end in ("close_notify", "fin"):
                side.send(answer(data))
                side.close_notify()
        except (OSError, ssl.SSLError) as exc:
            ends.append((-1, f"error {exc!r}"))

    return thread_server(handle, threaded=True)


GREETING = b"greeting first"


def greeting_backend(ctx: ssl.SSLContext, ends: list[tuple[int, str]],
                     close_notify: bool = True) -> socket.socket:
    """A listening TLS backend that half-closes first: a greeting and its close_notify
    (without CLOSE_NOTIFY: a FIN, shutdown(SHUT_WR)) right after the handshake, then it
    reads until its input ends (ENDS gets how many bytes came and how it ended) and
    closes."""
    from tests.unit.proxy.loopback_proxies import thread_server

    def handle(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            side = TlsHalfClose(conn, ctx, server=True)
            side.send(GREETING)
            if close_notify:
                side.close_notify()
            else:
                conn.shutdown(socket.SHUT_WR)
            data, end = side.read_to_end()
            ends.append((len(data), end))
        except (OSError, ssl.SSLError) as exc:
            ends.append((-1, f"error {exc!r}"))

    return thread_server(handle, threaded=True)


def backend_ends(ends: list[tuple[int, str]], size: int,
                 timeout: float = TIMEOUT + 2) -> list[str]:
    """How the inputs of SIZE bytes in ENDS ended, once there is one (a proxy can close
    the client's connection while the backend is still reading), or none after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while not any(n == size for n, _ in ends) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [end for n, end in ends if n == size]


def plain_client_greeted(port: int, payload: bytes) -> tuple[bytes, str]:
    """Reads to the end of the greeting, then sends PAYLOAD and a FIN; (the greeting, how
    it ended). What reached the backend is in its ENDS (backend_ends)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 2) as sock:
        got = read_plain(sock)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return got


def plain_backend(ends: list[tuple[int, str]]) -> socket.socket:
    """A listening plain backend: reads to its FIN (ENDS gets how many bytes came and how
    its input ended), answers and closes."""
    from tests.unit.proxy.loopback_proxies import thread_server

    def handle(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        data, end = read_plain(conn)
        ends.append((len(data), end))
        if end == "fin":
            conn.sendall(answer(data))

    return thread_server(handle, threaded=True)


def plain_client(port: int, payload: bytes) -> tuple[bytes, str]:
    """PAYLOAD, then shutdown(SHUT_WR); (the answer, how it ended)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 2) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_plain(sock)


def tls_client(port: int, ctx: ssl.SSLContext, payload: bytes,
               fin: bool = False, close_notify: bool = True) -> tuple[bytes, str]:
    """PAYLOAD over TLS, then a close_notify (no FIN, as Envoy's SslSocket; with FIN a
    shutdown(SHUT_WR) after it; without CLOSE_NOTIFY only the FIN); (the answer, how it
    ended)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 2) as sock:
        side = TlsHalfClose(sock, ctx, server=False)
        side.send(payload)
        if close_notify:
            side.close_notify()
        if fin:
            sock.shutdown(socket.SHUT_WR)
        return side.read_to_end()


# -- the bootstrap ------------------------------------------------------------------------
PREFIX = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
LOG = ("%BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% "
       "%DOWNSTREAM_TLS_VERSION% %CONNECTION_TERMINATION_DETAILS%\n")


def _common(certs: Path) -> dict[str, Any]:
    return {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}],
        "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}}


def _upstream_tls(certs: Path, tls13: bool = False) -> dict[str, Any]:
    common = _common(certs)
    if tls13:  # a client's default highest version is TLS 1.2 in Envoy (and remora)
        common["tls_params"] = {"tls_maximum_protocol_version": "TLSv1_3"}
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": PREFIX + "UpstreamTlsContext", "common_tls_context": common}}


# the listeners, each a client's way in: (cluster, from here over TLS 1.3)
PATHS = {"to-tls": "tls-backend", "to-tls13": "tls-backend-13", "from-tls": "plain-backend",
         "mesh": "mesh", "mesh13": "mesh-13", "greeted": "greeter",
         "greeted-fin": "greeter-fin"}


def _listener(name: str, port: int, cluster: str, logs: Path,
              tls: Path | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                          "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster,
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(logs / f"{name}.log"),
            "log_format": {"text_format_source": {"inline_string": LOG}}}}]}}]}
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": PREFIX + "DownstreamTlsContext", "require_client_certificate": True,
            "common_tls_context": _common(tls)}}
    return {"name": name, "address": addr("127.0.0.1", port), "filter_chains": [chain]}


def bootstrap(ports: dict[str, int], admin: int, tls_backend: int, plain_backend: int,
              certs: Path, logs: Path, greeter: int, greeter_fin: int) -> dict[str, Any]:
    """``to-tls``: plain listener -> TLS backend; ``from-tls``: mTLS listener -> plain
    backend; ``mesh``: plain listener -> mTLS to from-tls (client sidecar to server
    sidecar); ``to-tls13`` and ``mesh13`` as those with TLS 1.3 toward the backend (a
    TLS 1.2 one by default); ``greeted``: plain listener -> a TLS backend that
    half-closes first (greeting_backend on GREETER), ``greeted-fin`` to one that does
    with a FIN alone (on GREETER_FIN); each tcp_proxy with an access log LOG in
    LOGS/<listener>.log. PORTS: each listener's (PATHS)."""
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [_listener(name, ports[name], cluster, logs,
                                tls=certs if name == "from-tls" else None)
                      for name, cluster in PATHS.items()],
        "clusters": [
            static_cluster("tls-backend", tls_backend, transport_socket=_upstream_tls(certs)),
            static_cluster("tls-backend-13", tls_backend,
                           transport_socket=_upstream_tls(certs, tls13=True)),
            static_cluster("plain-backend", plain_backend),
            static_cluster("greeter", greeter, transport_socket=_upstream_tls(certs)),
            static_cluster("greeter-fin", greeter_fin, transport_socket=_upstream_tls(certs)),
            static_cluster("mesh", ports["from-tls"], transport_socket=_upstream_tls(certs)),
            static_cluster("mesh-13", ports["from-tls"],
                           transport_socket=_upstream_tls(certs, tls13=True))]}}
