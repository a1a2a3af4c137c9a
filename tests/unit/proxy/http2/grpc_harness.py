"""What the HTTP/2 differential suite runs against: a grpcio test service (no generated
code), an h2c backend for curl and nghttp, one Envoy bootstrap for both proxies, and a
context manager that starts either proxy on a config file and hands back its port and
access-log path.

The service is registered with ``grpc.method_handlers_generic_handler`` and no
serializers, so requests and replies are raw bytes and no .proto is needed (what
remora.apps.grpc_server does for the demo). The bootstrap is what the issue asks the
proxies to agree on: an HCM with ``codec_type: AUTO`` and ``http2_protocol_options``
downstream, clusters with explicit HTTP/2 upstream
(``envoy.extensions.upstreams.http.v3.HttpProtocolOptions``), and a JSON access log with
the fields compared per case.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, static_cluster

SERVICE = "remora.test.Echo"
BIG = 16 * 1024 * 1024  # both ends accept a 4 MiB message plus framing
CHANNEL_OPTIONS = [("grpc.max_send_message_length", BIG),
                   ("grpc.max_receive_message_length", BIG)]
ERROR_DETAILS = "precondition failed: état 42"
ERROR_TRAILERS = (("x-why", "because"), ("x-why-bin", b"\x00\x01\xfe\xff"))
SLEEP_S = 3.0

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# The access-log fields the suite compares (issue #11): the case name (a request header
# every client sends) to find the line, then what each proxy says about the stream.
LOG_FORMAT = {
    "case": "%REQ(X-CASE)%",
    "protocol": "%PROTOCOL%",
    "upstream_protocol": "%UPSTREAM_PROTOCOL%",
    "code": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "flags": "%RESPONSE_FLAGS%",
    "received": "%BYTES_RECEIVED%",
    "sent": "%BYTES_SENT%",
}


# -- the gRPC service ------------------------------------------------------------------
@dataclass
class Seen:
    """Which calls (by their x-case metadata) the service saw end before its handler was
    done: the client's cancel or deadline (an RST_STREAM) reached it through the proxy."""
    cancelled: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, case: str) -> threading.Event:
        with self.lock:
            return self.cancelled.setdefault(case, threading.Event())

    def forget(self, case: str) -> None:
        """Before CASE runs again (through another proxy): nothing seen yet."""
        with self.lock:
            self.cancelled.pop(case, None)


class Watch:
    """Set when the RPC ends (grpcio runs add_callback callbacks on termination); an end
    while the handler still runs is a cancellation and is recorded in Seen."""

    def __init__(self, context: grpc.ServicerContext, seen: Seen) -> None:
        self.ended = threading.Event()
        self.done = False
        case = dict(context.invocation_metadata()).get("x-case", "")
        cancelled = seen.event(str(case))

        def on_end() -> None:
            if not self.done:
                cancelled.set()
            self.ended.set()
        context.add_callback(on_end)


def handlers(seen: Seen) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"echo:" + request

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"item-%05d" % i

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        count, total = 0, 0
        for r in requests:
            count, total = count + 1, total + len(r)
        return b"count=%d bytes=%d" % (count, total)

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield b"re:" + r

    def sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
        watch = Watch(context, seen)
        watch.ended.wait(SLEEP_S)
        watch.done = True
        return b"slept"

    def ticks(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        watch = Watch(context, seen)
        for i in range(100):
            if watch.ended.wait(0.05):
                return
            yield b"tick-%d" % i
        watch.done = True

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(ERROR_TRAILERS)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, ERROR_DETAILS)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })


@contextmanager
def grpc_service() -> Iterator[tuple[int, Seen]]:
    """The test service on 127.0.0.1 (h2c), its port and what it saw; stopped on leaving."""
    seen = Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handlers(seen),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, seen
    finally:
        server.stop(None).wait(5)


# -- the h2c backend for curl and nghttp -----------------------------------------------
# An HTTP/2 server over cleartext (prior knowledge) built on the `h2` library: it answers
# every request with 200 and a one-line description of what arrived (method, path, body
# length and digest, the request header names the proxy forwarded), and on /trailers ends
# the response with a trailer.
H2C_BACKEND = r'''
import asyncio, hashlib, sys
import h2.config, h2.connection, h2.events, h2.exceptions

class Conn(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.t.write(self.c.data_to_send())
        self.reqs = {}

    def data_received(self, data):
        try:
            events = self.c.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.t.write(self.c.data_to_send()); self.t.close(); return
        for e in events:
            if isinstance(e, h2.events.RequestReceived):
                self.reqs[e.stream_id] = (dict(e.headers), bytearray())
            elif isinstance(e, h2.events.DataReceived):
                self.reqs[e.stream_id][1].extend(e.data)
                self.c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                self.respond(e.stream_id)
        self.t.write(self.c.data_to_send())

    def respond(self, sid):
        head, body = self.reqs.pop(sid)
        names = ",".join(sorted(k for k in head if not k.startswith(":")))
        line = "%s %s len=%d sha=%s headers=%s\n" % (
            head[":method"], head[":path"], len(body),
            hashlib.sha256(body).hexdigest()[:16], names)
        trailers = head[":path"].startswith("/trailers")
        self.c.send_headers(sid, [(":status", "200"), ("content-type", "text/plain"),
                                  ("x-backend", "h2c")])
        self.c.send_data(sid, line.encode(), end_stream=not trailers)
        if trailers:
            self.c.send_headers(sid, [("x-trailer", "done")], end_stream=True)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

asyncio.run(main())
'''


@contextmanager
def h2c_backend() -> Iterator[int]:
    """The h2c backend in its own process on 127.0.0.1; its port. Stopped on leaving."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", H2C_BACKEND, str(port)])
    try:
        lp.wait_listening(port, proc, "h2c backend")
        yield port
    finally:
        lp.stop(proc)


# -- the proxies -----------------------------------------------------------------------
def bootstrap(port: int, admin: int, log: Path, grpc_port: int,
              h2c_port: int) -> dict[str, Any]:
    """The one config both proxies run: gRPC paths to the grpcio service, the rest to the
    h2c backend, both clusters HTTP/2 upstream; no route timeout for the gRPC routes (a
    10,000-message stream must not race Envoy's 15 s default)."""
    explicit_h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}
    hcm = {"@type": HCM, "stat_prefix": "h2", "codec_type": "AUTO",
           "http2_protocol_options": {},
           "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
               "@type": FILE_LOG, "path": str(log),
               "log_format": {"json_format": LOG_FORMAT}}}],
           "route_config": {"name": "local", "virtual_hosts": [{
               "name": "all", "domains": ["*"], "routes": [
                   # The deadline case is the client's: grpcio's server also enforces the
                   # grpc-timeout it receives, and its DEADLINE_EXCEEDED reply would race
                   # the client's RST_STREAM (which one the proxy logs would be luck).
                   {"match": {"path": f"/{SERVICE}/Sleep"},
                    "route": {"cluster": "grpc", "timeout": "0s"},
                    "request_headers_to_remove": ["grpc-timeout"]},
                   {"match": {"prefix": f"/{SERVICE}/"},
                    "route": {"cluster": "grpc", "timeout": "0s"}},
                   {"match": {"prefix": "/"}, "route": {"cluster": "h2c"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "h2", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm}]}]}],
                "clusters": [
                    static_cluster("grpc", grpc_port,
                                   typed_extension_protocol_options=explicit_h2),
                    static_cluster("h2c", h2c_port,
                                   typed_extension_protocol_options=explicit_h2)]}}


@dataclass(frozen=True)
class RunningProxy:
    """A proxy that accepts on 127.0.0.1:port and writes its access log to log."""
    kind: str
    port: int
    admin: int
    log: Path
    config: Path


@contextmanager
def running_proxy(kind: str, config: Path, port: int, admin: int,
                  log: Path) -> Iterator[RunningProxy]:
    """KIND ("envoy" or "remora") on CONFIG (a bootstrap whose listener is PORT, admin
    ADMIN, access log LOG), once it accepts; stopped by PID on leaving (its stderr is in
    CONFIG with the suffix .err)."""
    started = False
    try:
        with lp.loopback_proxy(kind, config, port):
            started = True
            yield RunningProxy(kind, port, admin, log, config)
    except AssertionError as e:
        if started:
            raise
        # it exited or never listened: say what it printed (remora names the field)
        err = config.with_suffix(".err")
        said = err.read_text(errors="replace").strip()[-2000:] if err.exists() else ""
        raise AssertionError(f"{e}: {said}") from None


@contextmanager
def proxy_for(kind: str, directory: Path, grpc_port: int,
              h2c_port: int) -> Iterator[RunningProxy]:
    """KIND running `bootstrap` (written to DIRECTORY/KIND.json) in front of the two
    backends."""
    port, admin = free_port(), free_port()
    log = directory / f"{kind}.log"
    config = directory / f"{kind}.json"
    config.write_text(json.dumps(bootstrap(port, admin, log, grpc_port, h2c_port)))
    with running_proxy(kind, config, port, admin, log) as proxy:
        yield proxy


def log_entries(path: Path, cases: Iterable[str],
                timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """The access-log entry of each case (by its x-case field) once all are there, or
    what is there after TIMEOUT."""
    want = set(cases)
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            found = {}
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                found[str(entry.get("case"))] = entry
        if want <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
