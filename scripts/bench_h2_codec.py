#!/usr/bin/env python3
"""Benchmark the HTTP/2 codec alone: the pure-Python `h2` against nghttp2's C library.

Issue #11 asks to measure `h2` (python-hyper, sans-IO) against nghttp2 before choosing
the codec of `remora proxy`. This measures the server side of one HTTP/2 connection, no
sockets, no event loop: the client's bytes are made once (an `h2` client talking to the
`h2` server below), then replayed to a fresh server of each kind, which parses them,
collects each request (8 request headers with the pseudo-headers, a 100-byte gRPC
message), answers it (HEADERS, 100 bytes of DATA, trailers with grpc-status) and
serialises the answer:

- h2:      H2Connection(client_side=False): receive_data -> events (RequestReceived,
           DataReceived + acknowledge_received_data, StreamEnded), send_headers /
           send_data / send_headers(end_stream=True) -> data_to_send();
- h2-noval: the same with h2's header validation and normalisation turned off;
- ngh2:    only if importable: ngh2 (PyPI, alpha), a C extension over a vendored
           nghttp2 with an h2-like event API: receive_data + events(), send_response /
           send_data / send_trailers, data_to_send(); not a dependency of remora.
- nghttp2: libnghttp2 through scripts/nghttp2_ctypes.py: nghttp2_session_mem_recv with
           the on_begin_headers/on_header/on_data_chunk_recv/on_frame_recv callbacks,
           nghttp2_submit_response with a data provider + nghttp2_submit_trailer,
           nghttp2_session_mem_send.

Both servers advertise what Envoy's defaults are (max_concurrent_streams 100 as h2 does,
initial stream and connection windows of 256 MiB: Envoy's http2_protocol_options
defaults), the client what h2load does (-w 30 -W 30), so no WINDOW_UPDATE is needed in a
run. Before timing, each server's bytes are decoded by an `h2` client and compared (the
same responses, the same parsed requests): both do the same work. Figures: CPU time
(time.process_time) per request, best and median of --repeat runs, with one request in
flight per connection (c1) and ten (c10, h2load -m 10); --callgrind adds valgrind's
instruction count per request (the difference between a run of all rounds and a run of
the first round only, so interpreter start-up and imports cancel out).

--shape get replaces the gRPC exchange by what `bench_proxy.py --protocol h2` sends through
a sidecar: h2load's GET (5 headers, no body) and Envoy's reply to it for the seed's demo
server (6 headers, a 60-byte body, no trailers).

    python3 scripts/bench_h2_codec.py [--requests 5000] [--repeat 5] [--callgrind]
        [--concurrency 1,10] [--shape grpc,get]

No root, no network. Figures and the choice they led to: docs/proxy-http2.md.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes, Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nghttp2_ctypes as ng

try:  # optional: ngh2 (PyPI, alpha), a compiled sans-IO binding of a vendored nghttp2
    import ngh2
except ImportError:
    ngh2 = None

Header = tuple[bytes, bytes]

# A unary gRPC call as grpcio's Python client sends it: 8 request headers (4 pseudo).
REQUEST_HEADERS: list[Header] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/helloworld.Greeter/SayHello"),
    (b":authority", b"10.20.0.77:18080"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
    (b"user-agent", b"grpc-python/1.62.1 grpc-c/39.0.0 (linux; chttp2)"),
]
# gRPC length-prefixed message: flag byte, 4-byte length, 95 bytes of payload.
REQUEST_BODY = b"\x00\x00\x00\x00\x5f" + b"\x0a\x5d" + b"r" * 93
RESPONSE_HEADERS: list[Header] = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
]
RESPONSE_BODY = b"\x00\x00\x00\x00\x5f" + b"\x0a\x5d" + b"s" * 93
TRAILERS: list[Header] = [(b"grpc-status", b"0"), (b"grpc-message", b"OK")]


@dataclass(frozen=True)
class Shape:
    """One request/response exchange. No request body: HEADERS carries END_STREAM; no
    trailers: END_STREAM on the last DATA frame."""

    name: str
    request_headers: list[Header]
    request_body: bytes
    response_headers: list[Header]
    response_body: bytes
    trailers: list[Header]


GRPC = Shape("grpc", REQUEST_HEADERS, REQUEST_BODY, RESPONSE_HEADERS, RESPONSE_BODY, TRAILERS)
# What scripts/bench_proxy.py --protocol h2 sends through a sidecar: h2load's GET and the
# reply Envoy gives for the seed's demo server (60-byte body, no trailers).
GET = Shape(
    "get",
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"10.20.0.77:18080"),
     (b":path", b"/common/sauth"), (b"user-agent", b"h2load nghttp2/1.52.0")],
    b"",
    [(b":status", b"200"), (b"content-type", b"text/plain; charset=utf-8"),
     (b"content-length", b"60"), (b"date", b"Fri, 04 Dec 2026 17:30:00 GMT"),
     (b"x-envoy-upstream-service-time", b"0"), (b"server", b"istio-envoy")],
    b'{"code": 0, "status": "fail", "user": {"id": "test_common"}}',
    [],
)
SHAPES = {shape.name: shape for shape in (GRPC, GET)}

SERVER_WINDOW = 256 * 1024 * 1024  # Envoy's initial_stream/connection_window_size defaults
CLIENT_WINDOW = 2**30 - 1  # h2load's -w 30 / -W 30 defaults
DEFAULT_WINDOW = 65535


@dataclass
class Workload:
    """The client's bytes, one chunk per round; ``per_round[i]`` requests end in round i
    and the server answers all of them before the next round (concurrency = per round)."""

    requests: int
    concurrency: int
    shape: Shape = GRPC
    chunks: list[bytes] = field(default_factory=list)
    per_round: list[int] = field(default_factory=list)


@dataclass
class Response:
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    ended: bool = False


Parsed = tuple[list[Header], bytes]  # a request as the server parsed it


class Server(Protocol):
    """What both codecs offer the benchmark: bytes in, bytes out, parsed requests."""

    parsed: list[Parsed]

    def receive(self, data: bytes) -> None: ...

    def data_to_send(self) -> bytes: ...

    def close(self) -> None: ...


class H2Server:
    """The server side of one connection on `h2`; ``validate=False`` turns off h2's header
    validation and normalisation both ways (the cheapest h2 can be; a proxy would need
    the checks done elsewhere)."""

    def __init__(self, shape: Shape, validate: bool = True) -> None:
        self.shape = shape
        self.parsed: list[Parsed] = []
        self.conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=validate,
            normalize_inbound_headers=validate, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        # h2's own initial values plus Envoy's stream window (h2's documented way of
        # choosing the first SETTINGS: set local_settings before initiate_connection).
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            SettingCodes.INITIAL_WINDOW_SIZE: SERVER_WINDOW,
        })
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(SERVER_WINDOW - DEFAULT_WINDOW)
        self._streams: dict[int, tuple[list[Header], list[bytes]]] = {}

    def receive(self, data: bytes) -> None:
        conn = self.conn
        streams = self._streams
        for ev in conn.receive_data(data):
            if isinstance(ev, RequestReceived):
                streams[ev.stream_id] = (ev.headers, [])
            elif isinstance(ev, DataReceived):
                streams[ev.stream_id][1].append(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                headers, body = streams.pop(ev.stream_id)
                self.parsed.append((headers, b"".join(body)))
                sid = ev.stream_id
                shape = self.shape
                trailers, answer = shape.trailers, shape.response_body
                conn.send_headers(sid, shape.response_headers,
                                  end_stream=not answer and not trailers)
                if answer:
                    conn.send_data(sid, answer, end_stream=not trailers)
                if trailers:
                    conn.send_headers(sid, trailers, end_stream=True)
            elif isinstance(ev, StreamReset):
                streams.pop(ev.stream_id, None)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def close(self) -> None:
        pass


class NgServer:
    """The server side of one connection on libnghttp2 (scripts/nghttp2_ctypes.py)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.parsed: list[Parsed] = []
        self.ng = ng.Nghttp2Server(self._on_request, initial_window_size=SERVER_WINDOW,
                                   connection_window_size=SERVER_WINDOW)

    def _on_request(self, server: ng.Nghttp2Server, req: ng.Request) -> None:
        self.parsed.append((req.headers, b"".join(req.body)))
        shape = self.shape
        server.respond(req.stream_id, shape.response_headers, shape.response_body,
                       shape.trailers)

    def receive(self, data: bytes) -> None:
        self.ng.receive(data)

    def data_to_send(self) -> bytes:
        return self.ng.data_to_send()

    def close(self) -> None:
        self.ng.close()


class Ngh2Server:
    """The server side of one connection on ngh2 (only when it is importable): nghttp2's
    state machine in a C extension, with an h2-like event API (no Python callbacks)."""

    def __init__(self, shape: Shape) -> None:
        assert ngh2 is not None
        self.shape = shape
        self.parsed: list[Parsed] = []
        self.conn = ngh2.Connection(ngh2.Role.SERVER)
        # MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE, INITIAL_WINDOW_SIZE as above
        self.conn.initiate_connection({0x3: 100, 0x6: 65536, 0x4: SERVER_WINDOW})
        self.conn.set_local_window_size(SERVER_WINDOW)
        self._streams: dict[int, tuple[list[Header], list[bytes]]] = {}

    def receive(self, data: bytes) -> None:
        conn = self.conn
        streams = self._streams
        conn.receive_data(data)
        for ev in conn.events():
            if isinstance(ev, ngh2.RequestReceived):
                streams[ev.stream_id] = (list(ev.headers), [])
            elif isinstance(ev, ngh2.DataReceived):
                streams[ev.stream_id][1].append(ev.data)
            else:
                continue
            if ev.end_stream:  # automatic WINDOW_UPDATEs (Configuration default)
                sid = ev.stream_id
                headers, body = streams.pop(sid)
                self.parsed.append((headers, b"".join(body)))
                shape = self.shape
                trailers, answer = shape.trailers, shape.response_body
                conn.send_response(sid, shape.response_headers,
                                   end_stream=not answer and not trailers)
                if answer:
                    conn.send_data(sid, answer, end_stream=not trailers)
                if trailers:
                    conn.send_trailers(sid, trailers)

    def data_to_send(self) -> bytes:
        return bytes(self.conn.data_to_send())

    def close(self) -> None:
        pass


SERVERS: dict[str, Callable[[Shape], Server]] = {
    "h2": H2Server, "h2-noval": lambda shape: H2Server(shape, validate=False),
    "nghttp2": NgServer,
    **({"ngh2": Ngh2Server} if ngh2 is not None else {})}


def _client() -> H2Connection:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = Settings(client=True, initial_values={
        SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: CLIENT_WINDOW})
    client.initiate_connection()
    client.increment_flow_control_window(CLIENT_WINDOW - DEFAULT_WINDOW)
    return client


def _send_requests(client: H2Connection, count: int, shape: Shape) -> None:
    for _ in range(count):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, shape.request_headers, end_stream=not shape.request_body)
        if shape.request_body:
            client.send_data(sid, shape.request_body, end_stream=True)


def make_workload(requests: int, concurrency: int, shape: Shape = GRPC) -> Workload:
    """Record the client's bytes of a conversation with an `h2` server: each round sends
    ``concurrency`` requests (with whatever the client owes, e.g. its SETTINGS ACK) and the
    server answers all of them before the next."""
    work = Workload(requests, concurrency, shape)
    client, server = _client(), H2Server(shape)
    done = 0
    while done < requests:
        k = min(concurrency, requests - done)
        _send_requests(client, k, shape)
        work.chunks.append(client.data_to_send())
        work.per_round.append(k)
        server.receive(work.chunks[-1])
        ended = sum(isinstance(ev, StreamEnded)
                    for ev in client.receive_data(server.data_to_send()))
        if ended != k:
            raise RuntimeError(f"workload: {ended} of {k} responses ended in one round")
        done += k
    return work


def decode(work: Workload, outputs: list[bytes]) -> dict[int, Response]:
    """The responses in a server's bytes (one output per round), as an `h2` client that
    sent the workload's requests receives them."""
    client = _client()
    responses: dict[int, Response] = {}
    for k, out in zip(work.per_round, outputs, strict=True):
        _send_requests(client, k, work.shape)
        client.data_to_send()
        for ev in client.receive_data(out):
            if isinstance(ev, ResponseReceived):
                responses[ev.stream_id] = Response(headers=list(ev.headers))
            elif isinstance(ev, DataReceived):
                responses[ev.stream_id].body += ev.data
            elif isinstance(ev, TrailersReceived):
                responses[ev.stream_id].trailers = list(ev.headers)
            elif isinstance(ev, StreamEnded):
                responses[ev.stream_id].ended = True
            elif isinstance(ev, StreamReset):
                raise RuntimeError(f"stream {ev.stream_id} reset by the server: "
                                   f"{ev.error_code!r}")
    return responses


def serve(kind: str, work: Workload) -> tuple[float, list[bytes], list[Parsed]]:
    """Replay the workload to a fresh server: (CPU seconds, output per round, requests)."""
    server = SERVERS[kind](work.shape)
    try:
        outputs: list[bytes] = []
        receive, send, append = server.receive, server.data_to_send, outputs.append
        started = time.process_time()
        for chunk in work.chunks:
            receive(chunk)
            append(send())
        return time.process_time() - started, outputs, server.parsed
    finally:
        server.close()


def check(work: Workload) -> None:
    """Both servers parse the same requests and answer with the same responses (headers,
    body, trailers, END_STREAM), as an `h2` client decodes them: the same work measured."""
    shape = work.shape
    expected_request = (shape.request_headers, shape.request_body)
    expected = Response(shape.response_headers, shape.response_body, shape.trailers, True)
    for kind in SERVERS:
        _, outputs, parsed = serve(kind, work)
        responses = decode(work, outputs)
        if len(parsed) != work.requests or any(p != expected_request for p in parsed):
            raise RuntimeError(f"{kind}: parsed requests differ from what the client sent")
        if sorted(responses) != list(range(1, 2 * work.requests, 2)):
            raise RuntimeError(f"{kind}: {len(responses)} responses for {work.requests}")
        bad = [sid for sid, r in responses.items() if r != expected]
        if bad:
            raise RuntimeError(f"{kind}: stream {bad[0]} answered {responses[bad[0]]}")


def _callgrind_ir(kind: str, workfile: Path, rounds: int) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--callgrind-child", kind, str(workfile), str(rounds)],
        capture_output=True, text=True, timeout=900, check=True)
    found = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if not found:
        raise RuntimeError(f"callgrind: no instruction count in:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def callgrind(work: Workload) -> dict[str, float]:
    """Instructions per request: Ir(all rounds) - Ir(first round only), over the requests
    of the other rounds."""
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        workfile = Path(tmp) / "work.pickle"
        workfile.write_bytes(pickle.dumps(work))
        per: dict[str, float] = {}
        for kind in [k for k in SERVERS if k != "h2-noval"]:
            first = _callgrind_ir(kind, workfile, 1)
            whole = _callgrind_ir(kind, workfile, len(work.chunks))
            per[kind] = (whole - first) / (work.requests - work.per_round[0])
        return per


def _callgrind_child(kind: str, workfile: str, rounds: int) -> None:
    work: Workload = pickle.loads(Path(workfile).read_bytes())
    work.chunks = work.chunks[:rounds]
    serve(kind, work)


def _measure(args: argparse.Namespace, shape: Shape, conc: int) -> list[str]:
    """Print one row per codec for SHAPE at CONC streams in flight; return summary lines
    (labelled cN for the gRPC shape, as before shapes existed, else "SHAPE cN")."""
    label = f"c{conc}" if shape is GRPC else f"{shape.name} c{conc}"
    work = make_workload(args.requests, conc, shape)
    check(work)
    best: dict[str, float] = {}
    for kind in SERVERS:
        times = [serve(kind, work)[0] / args.requests * 1e6 for _ in range(args.repeat)]
        best[kind] = min(times)
        print(f"{kind:<9} {shape.name:<5} {conc:>7} {best[kind]:>10.1f} "
              f"{statistics.median(times):>12.1f}", flush=True)
    summary = []
    for other in ("nghttp2", "ngh2"):
        if other in best:
            summary.append(f"cpu/rq h2/{other} {label}: x{best['h2'] / best[other]:.2f} "
                           f"({best['h2']:.1f} / {best[other]:.1f} us)")
    if args.callgrind and shutil.which("valgrind") is None:
        summary.append("callgrind: valgrind not found (apt-get install valgrind)")
    elif args.callgrind:
        ir = callgrind(make_workload(args.callgrind_requests, conc, shape))
        for other in ("nghttp2", "ngh2"):
            if other in ir:
                summary.append(f"Ir/rq h2/{other} {label}: x{ir['h2'] / ir[other]:.2f} "
                               f"({ir['h2']:,.0f} / {ir[other]:,.0f} instructions)")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell")
    parser.add_argument("--concurrency", default="1,10",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="streams in flight per connection (h2load -m)")
    parser.add_argument("--shape", default="grpc", type=lambda s: s.split(","),
                        help="grpc (unary gRPC call with trailers) and/or get (h2load's GET "
                             "and the sidecar's 60-byte reply, as bench_proxy --protocol h2)")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per request under valgrind")
    parser.add_argument("--callgrind-requests", type=int, default=500)
    parser.add_argument("--callgrind-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := [x for x in args.shape if x not in SHAPES]:
        parser.error(f"--shape {unknown[0]}: one of {', '.join(SHAPES)}")
    if args.callgrind_child:
        kind, workfile, rounds = args.callgrind_child
        _callgrind_child(kind, workfile, int(rounds))
        return 0
    try:
        ng.library()
    except ng.Nghttp2Missing as exc:
        print(f"bench_h2_codec: {exc}", file=sys.stderr)
        return 2
    import h2
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}  {os.uname().nodename}  "
          f"{os.cpu_count()} CPUs  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"Python {sys.version.split()[0]}  h2 {h2.__version__}  "
          f"libnghttp2 {ng.version()}  ngh2 {ngh2.__version__ if ngh2 else '-'}  "
          f"requests={args.requests} repeat={args.repeat}")
    print(f"{'codec':<9} {'shape':<5} {'streams':>7} {'best us/rq':>10} {'median us/rq':>12}")
    summary: list[str] = []
    for shape in args.shape:
        for conc in args.concurrency:
            summary += _measure(args, SHAPES[shape], conc)
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
