"""In-process proxy on loopback for unit tests: build bootstraps, run a Server, talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.connection
import h2.events

from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.server.runtime import Server

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def addr(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def tcp_listener(name: str, port: int, cluster: str, log_path: str | None = None,
                 **tcp: Any) -> dict[str, Any]:
    typed: dict[str, Any] = {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster, **tcp}
    if log_path:
        typed["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": log_path}}]
    return {"name": name, "address": addr("127.0.0.1", port),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": typed}]}]}


def static_cluster(name: str, *ports: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **extra,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": addr("127.0.0.1", p)}} for p in ports]}]}}


def hcm_bootstrap(hcm: dict[str, Any], port: int, admin: int,
                  clusters: list[dict[str, Any]]) -> dict[str, Any]:
    """A bootstrap with one listener on 127.0.0.1:PORT whose only filter is HCM (a
    connection manager filter entry), the admin on ADMIN and CLUSTERS."""
    return {"admin": {"address": addr("127.0.0.1", admin)},
            "static_resources": {
                "listeners": [{"name": "l", "address": addr("127.0.0.1", port),
                               "filter_chains": [{"filters": [hcm]}]}],
                "clusters": clusters}}


# Ports handed out by free_port: below the kernel's ephemeral range (32768-60999 by
# default, net.ipv4.ip_local_port_range), so no connect() in the meantime can take one as
# its source port before the proxy under test binds it, and each one once per test run,
# so two listeners of one bootstrap never get the same port (bind(0) twice can).  Both
# happened: Envoy exited 1 at start in a CI run with a port bind(0) had given.
# Under pytest-xdist (./scripts/test) each worker hands out its own slice of that range:
# two workers walking one range from neighbouring pids would give the same ports out in
# turn, and a port kept free for "connection refused" could be another worker's listener.


def _port_range() -> tuple[int, int]:
    low, high = 20000, 32767
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        size = (high - low + 1) // count
        low += int(worker[2:]) % count * size
        high = low + size - 1
    return low, high


_PORTS_LOW, _PORTS_HIGH = _port_range()
_next_port = _PORTS_LOW + os.getpid() % (_PORTS_HIGH - _PORTS_LOW)
# loopback_proxies.each_kind starts both proxies from threads at once
_port_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on HOST that nothing is bound to now and that no other call in this
    process (on any thread) has returned."""
    import socket
    global _next_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(_PORTS_HIGH - _PORTS_LOW):
        with _port_lock:
            port = _next_port
            _next_port = _PORTS_LOW if port >= _PORTS_HIGH else port + 1
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS_LOW}-{_PORTS_HIGH} on {host}")


def write_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@asynccontextmanager
async def running(doc: dict[str, Any], tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc))
    server = Server(parse_bootstrap(doc, str(path)))
    server.load()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        for task in list(server.connections):
            task.cancel()


async def upstream(handler: Any) -> tuple[asyncio.base_events.Server, int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, int(srv.sockets[0].getsockname()[1])


async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()
    writer.write(data.upper())
    await writer.drain()
    writer.close()


async def until(predicate: Any, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def h2_tls_request(port: int, ctx: ssl.SSLContext, headers: list[tuple[str, str]]) -> bytes:
    """One HTTP/2 stream over TLS (ALPN h2) to 127.0.0.1:PORT: HEADERS with END_STREAM,
    then the response body, read until the stream ends or is reset."""
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
    try:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        body = b""
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "connection closed before the stream ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return body
