"""The seed's server told over gRPC (`vasth/simple-grpc-server`): it prints who called.

A grpcio server with one unary method, ``/remora.demo.Simple/Sauth`` (the seed's
``/common/sauth`` as an RPC), registered through a generic handler with raw bytes in and
out, so no generated code and no .proto file are needed: the request is ignored, the
reply is the seed's JSON body. For each call it prints, flushed per line,

    Method=/remora.demo.Simple/Sauth, Peer=ipv4:127.0.0.6:43122

where ``Peer`` is grpcio's ``context.peer()``: the TCP peer of the HTTP/2 connection the
call came on, i.e. what the seed's Go server prints as RemoteAddr. Behind a sidecar in
REDIRECT mode that is 127.0.0.6 (the inbound cluster's bind); with TPROXY, the client
pod's own address.

    python3 -m remora.apps.grpc_server [--port 18080] [--host ADDR] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent import futures
from typing import TextIO

import grpc

SERVICE = "remora.demo.Simple"
METHOD = "Sauth"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
BODY = b'{"code": 0, "status": "fail", "user": {"id": "test_common"}}'
DEFAULT_PORT = 18080


def log_line(method: str, peer: str) -> str:
    return f"Method={method}, Peer={peer}\n"


def handlers(out: TextIO | None) -> grpc.GenericRpcHandler:
    lock = threading.Lock()  # calls run on a thread pool: one whole line at a time

    def sauth(request: bytes, context: grpc.ServicerContext) -> bytes:
        if out is not None:
            with lock:
                out.write(log_line(FULL_METHOD, context.peer()))
                out.flush()
        return BODY

    # No request_deserializer/response_serializer: grpcio hands over and takes raw bytes.
    return grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(sauth)})


def start(host: str | None = None, port: int = DEFAULT_PORT,
          out: TextIO | None = sys.stdout, workers: int = 4) -> tuple[grpc.Server, int]:
    """Start serving (h2c, no TLS: the sidecar does mTLS); returns the server and its port.
    HOST None listens on every address like Go's ":18080" ([::] with IPv4 mapped, or
    0.0.0.0 when the host has no IPv6)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handlers(out),))
    bound = 0
    for address in ([host] if host else ["[::]", "0.0.0.0"]):
        where = f"[{address}]" if ":" in address and not address.startswith("[") else address
        try:
            bound = server.add_insecure_port(f"{where}:{port}")
        except RuntimeError:
            bound = 0
        if bound:
            break
    if not bound:
        raise OSError(f"listen tcp :{port}: cannot bind")
    server.start()
    return server, bound


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The seed's server over gRPC "
                                                 "(prints the peer of each call).")
    parser.add_argument("--host", default=None, help="address to bind (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--quiet", action="store_true", help="no line per call")
    args = parser.parse_args(argv)
    try:
        server, _ = start(args.host, args.port, None if args.quiet else sys.stdout)
    except OSError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
