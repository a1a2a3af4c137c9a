"""Small fakes of the proxy contract (interfaces.py) for the HTTP tests, over real loopback
sockets: a cluster whose connect() dials test servers on 127.0.0.1, a downstream built from
an accepted loopback connection, an upstream HTTP server with scripted behaviours, and a
raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools

from remora.proxy import registry
from remora.proxy.config.strict import Fields
from remora.proxy.interfaces import (
    ConnectionFacts,
    DrainDecision,
    OriginalSrc,
    Upstream,
    UpstreamError,
)
from remora.proxy.server.drain import NEVER_DRAIN
from remora.proxy.stream_info import StreamInfo, format_address

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")


class FakeStats:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.gauges: Counter[str] = Counter()

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def gauge_add(self, name: str, delta: int) -> None:
        self.gauges[name] += delta

    def observe(self, name: str, value_ms: float) -> None:
        pass


class RecordingLogger:
    def __init__(self) -> None:
        self.infos: list[StreamInfo] = []

    def log(self, info: StreamInfo) -> None:
        self.infos.append(info)


class FakeHostCounts:
    """interfaces.HostCounts, plus the rq_timeout host_stat charges by name."""

    def __init__(self) -> None:
        self.rq_total = self.rq_active = self.rq_success = self.rq_error = self.rq_timeout = 0


class FakeCluster:
    """STATIC-like cluster over loopback test servers; round robin, exclude_hosts re-picked
    as the core's ClusterImpl does."""

    def __init__(self, name: str, hosts: list[tuple[str, int]], max_requests: int = 1 << 30,
                 max_pending: int = 1 << 30, max_retries: int = 1 << 30) -> None:
        self.name = name
        self.buffer_limit = 1 << 20
        self.hosts = hosts
        self.limits = {"requests": max_requests, "pending_requests": max_pending,
                       "retries": max_retries}
        self.active: Counter[str] = Counter()
        self.overflows: Counter[str] = Counter()
        self.connects = 0
        self.connect_sources: list[str] = []
        self.host_stats: dict[str, FakeHostCounts] = {}
        self.reselections: list[int] = []  # host_selection_retry_max_attempts per pick
        self._rr = 0

    def _pick(self) -> tuple[str, int]:
        picked = self.hosts[self._rr % len(self.hosts)]
        self._rr += 1
        return picked

    def choose(self, facts: ConnectionFacts, exclude: frozenset[str] = frozenset(),
               reselections: int = 1) -> tuple[str, int] | None:
        # like the core's cluster: None (UH) only when there is no host at all; a pick in
        # EXCLUDE is re-picked up to RESELECTIONS times, then the last pick is used
        self.reselections.append(reselections)
        if not self.hosts:
            return None
        ip, port = self._pick()
        for _ in range(reselections if exclude else 0):
            if format_address(ip, port) not in exclude:
                break
            ip, port = self._pick()
        return ip, port

    async def connect(self, facts: ConnectionFacts, info: StreamInfo,
                      exclude_hosts: frozenset[str] = frozenset(), *,
                      host_selection_retry_max_attempts: int = 1,
                      target: tuple[str, int] | None = None) -> Upstream:
        info.upstream_cluster = self.name
        if target is None:
            target = self.choose(facts, exclude_hosts, host_selection_retry_max_attempts)
        if target is None:
            raise UpstreamError("UH", "")
        ip, port = target
        host = format_address(ip, port)
        info.upstream_host = host
        self.connects += 1
        # original_src: bind to the downstream's address (loopback aliases work unprivileged)
        local = (facts.original_src.ip, 0) if facts.original_src is not None else None
        try:
            reader, writer = await asyncio.open_connection(ip, port, local_addr=local)
        except OSError as e:
            reason = f"delayed connect error: {os.strerror(e.errno or 0)}"
            info.upstream_transport_failure_reason = reason
            raise UpstreamError("UF", reason, host) from None
        la = writer.get_extra_info("sockname")
        info.upstream_local_address = format_address(la[0], la[1])
        self.connect_sources.append(info.upstream_local_address)
        return Upstream(reader, writer, host, info.upstream_local_address)

    def try_acquire(self, resource: str) -> bool:
        if self.active[resource] >= self.limits[resource]:
            self.overflows[resource] += 1
            return False
        self.active[resource] += 1
        return True

    def release(self, resource: str) -> None:
        self.active[resource] -= 1

    def host_stat(self, host: str, stat: str, delta: int = 1) -> None:
        counts = self.host_counts(host)
        setattr(counts, stat, getattr(counts, stat) + delta)

    def host_counts(self, host: str) -> FakeHostCounts:
        return self.host_stats.setdefault(host, FakeHostCounts())


class FakeClusterManager:
    def __init__(self, *clusters: FakeCluster) -> None:
        self.clusters = {c.name: c for c in clusters}

    def get(self, name: str) -> FakeCluster | None:
        return self.clusters.get(name)


class FakeContext:
    def __init__(self, cm: FakeClusterManager) -> None:
        self.cluster_manager = cm
        self.stats = FakeStats()
        self.logger = RecordingLogger()
        self.logged_configs: list[Any] = []

    def access_loggers(self, configs: list[Any], path: str) -> list[RecordingLogger]:
        self.logged_configs.extend(configs)
        return [self.logger]


@dataclass
class FakeDownstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    facts: ConnectionFacts
    info: StreamInfo
    drain: DrainDecision = NEVER_DRAIN

    def close(self) -> None:
        self.writer.close()


def build_hcm(typed_config: dict[str, Any], ctx: FakeContext) -> Any:
    cfg = {"@type": HCM_TYPE, **typed_config}
    f = Fields(cfg, "typed_config")
    from remora.proxy.config.strict import type_url_of
    ext = registry.lookup("network", "envoy.filters.network.http_connection_manager",
                          type_url_of(f), "x")
    return ext.factory(f, ctx)


FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def app_route(name: str, prefix: str,
              per_filter: dict[str, Any] | None = None) -> dict[str, Any]:
    """A prefix route to the cluster "app" without a route timeout, with the filters'
    per-route configs PER_FILTER (typed_per_filter_config) if given."""
    r: dict[str, Any] = {"name": name, "match": {"prefix": prefix},
                         "route": {"cluster": "app", "timeout": "0s"}}
    if per_filter:
        r["typed_per_filter_config"] = per_filter
    return r


def hcm_config(routes: list[dict[str, Any]] | None = None, *, domains: list[str] | None = None,
               http_filters: list[dict[str, Any]] | None = None, vhost_extra: dict[str, Any]
               | None = None, **extra: Any) -> dict[str, Any]:
    vhost = {"name": "vh", "domains": domains or ["*"],
             "routes": routes or [{"name": "default", "match": {"prefix": "/"},
                                   "route": {"cluster": "app", "timeout": "0s"}}]}
    vhost.update(vhost_extra or {})
    filters = http_filters if http_filters is not None else [
        {"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
        {"name": "envoy.filters.http.cors", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]
    cfg: dict[str, Any] = {"stat_prefix": "inbound_0.0.0.0_18080",
                           # as Istio writes it: the fake cluster managers hold only
                           # the clusters a test uses (a route to an unknown one: 503 NC)
                           "route_config": {"name": "rc", "validate_clusters": False,
                                            "virtual_hosts": [vhost]},
                           "http_filters": filters, "access_log": [{"name": "test"}]}
    cfg.update(extra)
    return cfg


@contextlib.asynccontextmanager
async def proxy(hcm: Any, original_src: bool = False,
                remote_override: str | None = None) -> AsyncIterator[tuple[str, int]]:
    """Listen on 127.0.0.1:0 and hand each accepted connection to HCM as a Downstream."""
    tasks: dict[asyncio.Task[Any], FakeDownstream] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        facts = ConnectionFacts(local_ip=local[0], local_port=local[1], remote_ip=peer[0],
                                remote_port=peer[1], direct_remote_ip=peer[0])
        if original_src:
            facts.original_src = OriginalSrc(ip=peer[0], mark=1337)
        info = StreamInfo(downstream_local_address=format_address(*local[:2]),
                          downstream_remote_address=format_address(*peer[:2]),
                          downstream_direct_remote_address=format_address(*peer[:2]),
                          listener_name="virtualInbound", filter_chain_name="0.0.0.0_18080")
        ds = FakeDownstream(reader, writer, facts, info)
        task = asyncio.current_task()
        assert task is not None
        tasks[task] = ds
        try:
            await hcm.on_connection(ds)
        finally:
            ds.close()
            tasks.pop(task, None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield ("127.0.0.1", port)
    finally:
        server.close()
        # end the connections the way a client would (EOF), so no task is left cancelled
        for ds in list(tasks.values()):
            with contextlib.suppress(Exception):
                ds.writer.transport.abort()
        if tasks:
            await asyncio.wait(list(tasks), timeout=2)


# -- the upstream app ------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: str


@dataclass
class App:
    """An HTTP/1.1 server on 127.0.0.1 that answers with what it saw (JSON) unless the path
    asks for something else: /status/N, /slow/MS, /reset, /chunked, /close, /truncate."""

    host: str = "127.0.0.1"
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    fixed_status: int | None = None  # answer every request with this status
    server: asyncio.Server | None = None
    raw_reader: asyncio.StreamReader | None = None

    async def start(self) -> App:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.raw_reader = reader
        peer = writer.get_extra_info("peername")
        try:
            while True:
                seen = await _read_request(reader, f"{peer[0]}:{peer[1]}")
                if seen is None:
                    break
                self.seen.append(seen)
                if not await self._respond(seen, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, seen: Seen, w: asyncio.StreamWriter) -> bool:
        p = seen.path
        body = json.dumps({"method": seen.method, "path": p, "headers": seen.headers,
                           "body": seen.body.decode("latin-1"), "peer": seen.peer}).encode()
        status = self.fixed_status or 200
        if p.startswith("/status/"):
            status = int(p.split("/")[2])
        elif p.startswith("/slow/"):
            await asyncio.sleep(int(p.split("/")[2]) / 1000)
        elif p.startswith("/reset"):
            return False
        elif p.startswith("/ws"):
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n"
                    b"upgrade: websocket\r\n\r\nhello from app|")
            while data := await self.raw_reader.read(65536):
                w.write(data.upper())
                await w.drain()
            return False
        elif p.startswith("/chunked"):
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await w.drain()
            return True
        elif p.startswith("/close"):
            w.write(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
            await w.drain()
            return False
        elif p.startswith("/truncate"):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
            await w.drain()
            return False
        if status in (204, 304):
            w.write(b"HTTP/1.1 %d X\r\n\r\n" % status)
        elif seen.method == "HEAD":
            w.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, len(body)))
        else:
            w.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nserver: app\r\n\r\n%s"
                    % (status, len(body), body))
        await w.drain()
        return True


async def _read_request(reader: asyncio.StreamReader, peer: str) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            n, v = line.split(":", 1)
            headers.append((n, v.strip()))
    hm = {n.lower(): v for n, v in headers}
    body = b""
    if "content-length" in hm:
        body = await reader.readexactly(int(hm["content-length"]))
    elif hm.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return Seen(method, path, headers, body, peer)


# -- the client ------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buf = b""
        self.closed = False

    @classmethod
    async def connect(cls, addr: tuple[str, int], local_ip: str | None = None) -> Client:
        local = (local_ip, 0) if local_ip else None
        r, w = await asyncio.open_connection(addr[0], addr[1], local_addr=local)
        return cls(r, w)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def get(self, path: str = "/", host: str = "app.test", headers: str = "",
                  method: str = "GET") -> Response:
        self.send(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{headers}\r\n".encode())
        return await self.response(head=method == "HEAD")

    async def response(self, head: bool = False, timeout: float = 5.0) -> Response:
        return await asyncio.wait_for(self._response(head), timeout)

    async def _response(self, head: bool) -> Response:
        parts: dict[str, Any] = {"headers": [], "body": b"", "done": False}

        class P:
            def on_header(self, n: bytes, v: bytes) -> None:
                parts["headers"].append((n.decode().lower(), v.decode()))

            def on_headers_complete(self) -> None:
                parts["hc"] = True

            def on_body(self, b: bytes) -> None:
                parts["body"] += b

            def on_message_complete(self) -> None:
                parts["done"] = True

        parser = httptools.HttpResponseParser(P())
        data = self._buf
        self._buf = b""
        while True:
            if data:
                # feed byte-wise boundaries: stop at the end of this message
                for i in range(len(data)):
                    parser.feed_data(data[i:i + 1])
                    if parts["done"] or (head and parts.get("hc")):
                        self._buf = data[i + 1:]
                        return Response(parser.get_status_code(), parts["headers"],
                                        parts["body"])
            data = await self.reader.read(65536)
            if not data:
                self.closed = True
                if parts.get("hc"):
                    return Response(parser.get_status_code(), parts["headers"], parts["body"])
                raise ConnectionError("closed before a response")

    async def at_eof(self, timeout: float = 2.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except TimeoutError:
            return False
        return data == b""

    def close(self) -> None:
        self.writer.close()


