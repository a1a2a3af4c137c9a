"""The live form's probe: one real HTTP request from inside the client pod, and the
access-log lines it left in each sidecar.

The request is sent from a socket created in the client pod's network namespace
(remora.netns.socket_in) by this process, uid 0 / gid 0: not the proxy's 1337, so the
pod's nat OUTPUT captures it exactly as it captures the app's own requests. It carries an
``x-request-id`` and a ``User-Agent`` that name it; Istio's default access-log format
prints both (``"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%"``), which is how its lines are
found among the app's own traffic. Envoy keeps an incoming x-request-id on requests it
treats as internal (``preserve_external_request_id`` is about edge requests only,
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-request-id);
the user agent is the fallback.

A Service port whose protocol is HTTP/2 (Istio's protocol selection,
remora.controlplane.protocol: a port named ``grpc``/``http2``/``grpc-web``, appProtocol
``kubernetes.io/h2c``...) gets an HTTP/2 probe instead, over the same kind of socket: h2c
with prior knowledge (RFC 9113 section 3.3), what a gRPC client sends to its sidecar. On a
GRPC port it is a gRPC call: ``POST PATH`` with ``content-type: application/grpc``,
``te: trailers`` and one empty message; the answer's ``grpc-status`` (trailers, or the
headers of a trailers-only reply) is recorded. A PATH of ``/`` becomes the standard
health check ``/grpc.health.v1.Health/Check``, which every gRPC server answers (OK, or
UNIMPLEMENTED when it has no health service: either way the app got the call). The
framing and HPACK are the ``h2`` library's (python-hyper, sans-IO).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from remora import netns
from remora.diagnose.envoy.access_log import AccessLogEntry, parse_access_log

USER_AGENT = "remora-explain-probe"
GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
EMPTY_GRPC_MESSAGE = b"\x00\x00\x00\x00\x00"  # not compressed, length 0
# gRPC status codes by number (grpc/doc/statuscodes.md), for the probe's summary
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


@dataclass
class ProbeResult:
    request_id: str
    url: str  # for people: http://AUTHORITY/PATH
    connected_to: str  # HOST:PORT the socket connected to
    local_address: str = ""  # the probe socket's own address (what a no-mesh server sees)
    status: int | None = None
    status_line: str = ""
    error: str = ""  # why the request failed, if it did
    elapsed_ms: float = 0.0
    response_headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    protocol: str = "HTTP/1.1"  # what the probe spoke: HTTP/1.1, or HTTP/2 (h2c)
    grpc: bool = False  # a gRPC call (a GRPC port)
    grpc_status: int | None = None  # the answer's grpc-status
    grpc_message: str = ""

    @property
    def user_agent(self) -> str:
        return f"{USER_AGENT}/{self.request_id}"

    def summary(self) -> str:
        how = self.status_line if self.status is not None else f"failed: {self.error}"
        if self.grpc_status is not None:
            name = (GRPC_CODES[self.grpc_status] if 0 <= self.grpc_status < len(GRPC_CODES)
                    else "?")
            how += f", grpc-status {self.grpc_status} {name}"
            if self.grpc_message:
                how += f" ({self.grpc_message})"
        what = ""
        if self.protocol == "HTTP/2":
            what = " (gRPC over HTTP/2, h2c)" if self.grpc else " (HTTP/2, h2c)"
        return (f"{self.method} {self.url}{what} -> {how} ({self.elapsed_ms:.0f} ms, "
                f"x-request-id {self.request_id})")


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_bytes(path: str, authority: str, request_id: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: {USER_AGENT}/{request_id}\r\nAccept: */*\r\n"
            f"x-request-id: {request_id}\r\nConnection: close\r\n\r\n").encode()


def parse_response_head(raw: bytes) -> tuple[int | None, str, dict[str, str]]:
    """Status code, status line and headers of an HTTP/1.x response (None: not HTTP)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None, lines[0][:80], {}
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), lines[0], headers


def probe(netns_name: str, host: str, port: int, authority: str, path: str,
          request_id: str | None = None, timeout: float = 5.0) -> ProbeResult:
    """One GET from inside the pod's namespace; failures are recorded, not raised."""
    rid = request_id or new_request_id()
    result = ProbeResult(rid, f"http://{authority}{path}",
                         f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    # the socket of the destination's family: an IPv6 ClusterIP or pod IP is reached over
    # IPv6, through the pod's ip6tables rules
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = netns.socket_in(netns.resolve(netns_name), af, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    raw = b""
    try:
        sock.connect((host, port))
        local = sock.getsockname()
        # as Envoy and the access log print addresses: [fd00::1]:PORT for IPv6
        result.local_address = (f"[{local[0]}]:{local[1]}" if af == socket.AF_INET6
                                else f"{local[0]}:{local[1]}")
        sock.sendall(request_bytes(path, authority, rid))
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            raw += chunk
    except OSError as exc:
        if not raw:
            result.error = f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        sock.close()
        result.elapsed_ms = (time.monotonic() - start) * 1000
    if raw:
        result.status, result.status_line, result.response_headers = parse_response_head(raw)
        if result.status is None:
            result.error = f"the answer is not HTTP: {result.status_line!r}"
    elif not result.error:
        result.error = "the connection was closed without an answer"
    return result


def h2_request_headers(path: str, authority: str, request_id: str,
                       grpc: bool) -> list[tuple[str, str]]:
    """The probe's HTTP/2 request header block (a gRPC call's on a GRPC port)."""
    headers = [(":method", "POST" if grpc else "GET"), (":scheme", "http"),
               (":authority", authority), (":path", path),
               ("user-agent", f"{USER_AGENT}/{request_id}"), ("x-request-id", request_id)]
    if grpc:
        return [*headers, ("content-type", "application/grpc"), ("te", "trailers")]
    return [*headers, ("accept", "*/*")]


def probe_h2(netns_name: str | None, host: str, port: int, authority: str, path: str,
             request_id: str | None = None, timeout: float = 5.0,
             grpc: bool = False) -> ProbeResult:
    """One HTTP/2 request (h2c prior knowledge) from inside the pod's namespace (None:
    this process's own), a gRPC call when GRPC; failures are recorded, not raised."""
    rid = request_id or new_request_id()
    if grpc and path in ("", "/"):
        path = GRPC_HEALTH_CHECK
    result = ProbeResult(rid, f"http://{authority}{path}",
                         f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                         method="POST" if grpc else "GET", protocol="HTTP/2", grpc=grpc)
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = netns.resolve(netns_name) if netns_name is not None else None
    sock = netns.socket_in(where, af, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8"))
    head: dict[str, str] = {}
    trailers: dict[str, str] = {}
    ended = False
    first = b""  # the answer's first bytes, to say what it was if it is not HTTP/2
    spoke_h2 = False  # the server's preface (a SETTINGS frame) came
    start = time.monotonic()
    try:
        sock.connect((host, port))
        local = sock.getsockname()
        result.local_address = (f"[{local[0]}]:{local[1]}" if af == socket.AF_INET6
                                else f"{local[0]}:{local[1]}")
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, h2_request_headers(path, authority, rid, grpc),
                          end_stream=not grpc)
        if grpc:
            conn.send_data(sid, EMPTY_GRPC_MESSAGE, end_stream=True)
        sock.sendall(conn.data_to_send())
        while not ended:
            data = sock.recv(1 << 16)
            if not data:
                result.error = ("the connection was closed before the response ended"
                                if spoke_h2 else
                                f"the answer is not HTTP/2 (it begins {first[:40]!r})"
                                if first else "the connection was closed without an answer")
                break
            first = first or data
            for event in conn.receive_data(data):
                spoke_h2 = spoke_h2 or isinstance(event, h2.events.RemoteSettingsChanged)
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    head = {str(k): str(v) for k, v in event.headers or []}
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == sid:
                    trailers = {str(k): str(v) for k, v in event.headers or []}
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    ended = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    result.error = f"the stream was reset (RST_STREAM {event.error_code!s})"
                    ended = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    result.error = f"the connection was closed (GOAWAY {event.error_code!s})"
                    ended = True
            sock.sendall(conn.data_to_send())
    except h2.exceptions.ProtocolError as exc:
        result.error = f"the answer is not HTTP/2 ({type(exc).__name__}: {exc})"
    except OSError as exc:
        if not head:
            result.error = f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        sock.close()
        result.elapsed_ms = (time.monotonic() - start) * 1000
    status = head.get(":status", "")
    if status.isdigit():
        result.status, result.status_line = int(status), f"HTTP/2 {status}"
        result.response_headers = {k: v for k, v in head.items() if not k.startswith(":")}
        # a trailers-only reply (an error before any message) has grpc-status in its headers
        grpc_fields = trailers or head
        code = grpc_fields.get("grpc-status", "")
        if grpc and code.isdigit():
            result.grpc_status = int(code)
            result.grpc_message = grpc_fields.get("grpc-message", "")
        result.response_headers.update(trailers)
    elif not result.error:
        result.error = "the connection was closed without an answer"
    return result


def probe_entries(text: str, request_id: str, source: str) -> list[AccessLogEntry]:
    """The access-log lines of the probe: its x-request-id, or its user agent."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if request_id not in line:  # only the probe's lines: the rest may be anything
            continue
        for e in parse_access_log(line, source):
            if e.request_id == request_id or (e.user_agent or "").endswith(request_id):
                found.append(replace(e, line=lineno))
    return found


def wait_entries(read: Callable[[], str], request_id: str, source: str,
                 timeout: float = 3.0) -> list[AccessLogEntry]:
    """Poll a sidecar's log until the probe's line is there (Envoy writes it when the
    stream ends, and may buffer it for its flush interval)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe_entries(read(), request_id, source)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
