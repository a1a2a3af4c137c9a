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
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from remora import netns
from remora.diagnose.envoy.access_log import AccessLogEntry, parse_access_log

USER_AGENT = "remora-explain-probe"


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

    @property
    def user_agent(self) -> str:
        return f"{USER_AGENT}/{self.request_id}"

    def summary(self) -> str:
        how = self.status_line if self.status is not None else f"failed: {self.error}"
        return f"GET {self.url} -> {how} ({self.elapsed_ms:.0f} ms, x-request-id {self.request_id})"


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
