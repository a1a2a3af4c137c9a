#!/usr/bin/env python3
"""Instructions per request of a TLS server: uvloop's SSLProtocol or a MemoryBIO protocol.

The measurement behind docs/proxy-http.md's "The lab's mTLS path": is uvloop's
SSLProtocol itself worth replacing? A server process (under ``valgrind --tool=callgrind``,
counters zeroed after 100 warm-up requests) answers each request head read over TLS with a
short response, in one of three modes:

- ``uvloop``: ``loop.create_server(ssl=ctx)`` with a plain ``ssl.SSLContext``;
- ``uvloop-direct``: the same with remora's ``SSLObject`` class (transport/tls.py);
- ``bio``: a Protocol on the plain TCP transport driving ``ssl.MemoryBIO``s itself, the
  least such a protocol does (no flow control, close_notify or error paths).

One client connection (this process, no root, loopback) sends N requests one at a time.

    python3 scripts/bench_tls_protocol.py --mode bio --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import cast

from proxy_cpu_harness import callgrind_total, free_port, wait_listening

RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


class _App(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's own transport classes

    def data_received(self, data: bytes) -> None:
        if data.endswith(b"\r\n\r\n"):
            self.t.write(RESP)


class _Bio(asyncio.Protocol):
    """TLS over MemoryBIOs on the plain transport: what a protocol of our own would do."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = self.ctx.wrap_bio(self.inc, self.out, server_side=True)
        inner = self.obj._sslobj  # type: ignore[attr-defined]
        self.read, self.write, self.pending = inner.read, inner.write, inner.pending
        self.ready = False

    def data_received(self, data: bytes) -> None:
        self.inc.write(data)
        if not self.ready:
            try:
                self.obj.do_handshake()
                self.ready = True
            except ssl.SSLWantReadError:
                pass
            if self.out.pending:
                self.t.write(self.out.read())
            if not self.ready:
                return
        try:
            while self.inc.pending or self.pending():
                chunk = self.read(65536)
                if not chunk:
                    break
                if chunk.endswith(b"\r\n\r\n"):
                    self.write(RESP)
                    self.t.write(self.out.read())
        except ssl.SSLWantReadError:
            pass
        if self.out.pending:  # post-handshake messages (session tickets)
            self.t.write(self.out.read())


def serve(mode: str, port: int, certs: Path) -> None:
    import uvloop

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    if mode == "uvloop-direct":
        from remora.proxy.transport.tls import _DirectSSLObject
        ctx.sslobject_class = _DirectSSLObject

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if mode == "bio":
            srv = await loop.create_server(lambda: _Bio(ctx), "127.0.0.1", port)
        else:
            srv = await loop.create_server(_App, "127.0.0.1", port, ssl=ctx)
        await srv.serve_forever()

    uvloop.run(main())


def measure(mode: str, requests: int) -> float:
    from remora.controlplane.ca import CertificateAuthority

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        CertificateAuthority(tmp / "ca").ensure_workload(tmp / "certs", "demo")
        port = free_port()
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp / 'callgrind.out'}",
             sys.executable, __file__, "--serve", mode, str(port), str(tmp / "certs")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, server, 300)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                def drive(count: int) -> None:
                    for _ in range(count):
                        s.sendall(REQUEST)
                        got = b""
                        while not got.endswith(b"ok"):
                            got += s.recv(65536)

                drive(100)
                subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True,
                               capture_output=True)
                drive(requests)
                subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,
                               capture_output=True)
            return callgrind_total(tmp) / requests
        finally:
            server.terminate()
            server.wait(10)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("uvloop", "uvloop-direct", "bio"), default="uvloop")
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    per = measure(args.mode, args.requests)
    print(f"{args.mode}: {args.requests} requests: {per / 1000:.1f} k instructions per request "
          "(callgrind, the TLS server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
