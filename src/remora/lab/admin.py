"""Talking to a sidecar's admin API (127.0.0.1:15000) inside its pod's network namespace.

istioctl reaches the admin API through the pod (port-forward to pilot-agent); here the
socket is simply created in the pod's namespace (remora.netns.socket_in) and the request
sent over it, so the host's own network is never involved. The same calls work for
`remora proxy` and a real Envoy: /config_dump?include_eds, /logging, /clusters.
"""

from __future__ import annotations

import socket
from pathlib import Path

from remora import netns
from remora.errors import RemoraError

ADMIN = ("127.0.0.1", 15000)


def request(netns_name: str, method: str, target: str, timeout: float = 10.0,
            where: str = "the pod") -> bytes:
    """One HTTP/1.1 request to the admin API; the body of a 2xx answer."""
    path = netns.resolve(str(Path("/run/netns") / netns_name))
    sock = netns.socket_in(path, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(ADMIN)
        except OSError as exc:
            raise RemoraError(f"the sidecar admin API of {where} at 127.0.0.1:15000 does not "
                              f"answer ({exc.strerror or exc})",
                              "is the pod Ready? see `remora get pods` and `remora logs POD "
                              "-c istio-proxy`") from None
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:15000\r\n"
                     "Connection: close\r\nContent-Length: 0\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise RemoraError(f"the sidecar of {where} gave no HTTP answer to {target}",
                          "see `remora logs POD -c istio-proxy`")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    if not 200 <= int(parts[1]) < 300:
        raise RemoraError(f"the sidecar of {where} answered {status_line!r} to {target}: "
                          f"{body.decode(errors='replace').strip()[:200]}",
                          "see `remora logs POD -c istio-proxy`")
    return body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out
