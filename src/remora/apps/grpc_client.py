"""The seed's client told over gRPC (`vasth/simple-grpc-client`): one call a second.

Every INTERVAL seconds it calls ``/remora.demo.Simple/Sauth`` on TARGET (grpcio, raw
bytes, no generated code) over one HTTP/2 channel that it keeps, as the Go client keeps
its connection, and prints the call's gRPC status with its code, then the reply:

    status=OK code=0 reply={"code": 0, "status": "fail", "user": {"id": "test_common"}}
    status=UNAVAILABLE code=14 details=failed to connect to all addresses; ...

The status is the ``grpc-status`` trailer the server (or a proxy on the way) sent, which
Istio's default access-log line does not print. Names resolve through getaddrinfo, so the
pod's resolv.conf applies.

    python3 -m remora.apps.grpc_client [--target HOST:PORT] [--interval 1] [--count N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# grpcio's default resolver is c-ares; "native" is getaddrinfo, as the seed's Go client
# resolves (the pod's /etc/hosts and resolv.conf). Read when gRPC starts: set it first.
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

import grpc

from remora.apps.grpc_server import FULL_METHOD

DEFAULT_TARGET = "simple-grpc-server-svc.demo-to:18080"


def status_line(code: grpc.StatusCode, reply: bytes | None = None, details: str = "") -> str:
    number = code.value[0]
    line = f"status={code.name} code={number}"
    if reply is not None:
        line += " reply=" + reply.decode("utf-8", errors="replace")
    if details:
        line += " details=" + " ".join(details.split())
    return line


def call(stub: grpc.UnaryUnaryMultiCallable[bytes, bytes], timeout: float) -> str:
    """One call; its status line (never raises for an RPC error)."""
    try:
        reply = stub(b"", timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return status_line(code, details=details or "")
    return status_line(grpc.StatusCode.OK, reply)


def channel(target: str) -> grpc.Channel:
    # grpc.enable_http_proxy 0: an http_proxy variable must not reroute the call; the
    # sidecar captures it.
    return grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The seed's client over gRPC "
                                                 "(one call a second).")
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds to sleep before each call (default 1, as the seed)")
    parser.add_argument("--count", type=int, default=0, help="stop after N calls (0: never)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="deadline of each call in seconds (grpc-timeout)")
    args = parser.parse_args(argv)
    done = 0
    with channel(args.target) as ch:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(FULL_METHOD)
        try:
            while args.count == 0 or done < args.count:
                time.sleep(args.interval)
                done += 1
                sys.stdout.write(call(stub, args.timeout) + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
