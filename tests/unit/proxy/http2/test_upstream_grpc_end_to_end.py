"""gRPC end to end through the proxy's two HTTP/2 sides: grpcio's client -> the proxy
(HTTP/2 downstream, codec AUTO) -> the upstream HTTP/2 pool -> grpcio's server, on
loopback, run once through Envoy 1.40 and once through `remora proxy` with the same
bootstrap. Unary, a 4 MiB message, an error status with its message (trailers), server
streaming, a 10,000-message bidirectional stream, an unknown method, a deadline: the
same results on both, the same access-log lines (PROTOCOL and UPSTREAM_PROTOCOL HTTP/2,
GRPC_STATUS from the trailers).

Needs the downstream HTTP/2 side (remora.proxy.http2.downstream, issue 11's other half):
skipped without it. Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.proxy_helpers import free_port

pytest.importorskip("remora.proxy.http2.downstream",
                    reason="needs the downstream HTTP/2 side of remora proxy")
pytestmark = pytest.mark.envoy

LIMIT = 8 << 20
OPTIONS = [("grpc.max_receive_message_length", LIMIT),
           ("grpc.max_send_message_length", LIMIT)]
BIG = bytes(range(256)) * (4 * 4096)  # 4 MiB


def _handlers() -> grpc.GenericRpcHandler:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return req

    def fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b""

    def slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        time.sleep(1)
        return req

    def out(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(req)):
            yield b"m%d" % i

    def bidi(it: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        yield from it

    return grpc.method_handlers_generic_handler("t.S", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Out": grpc.unary_stream_rpc_method_handler(out),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi)})


def _calls(port: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as ch:
        def outcome(name: str, call: Any) -> None:
            try:
                found[name] = ("OK", call())
            except grpc.RpcError as err:
                found[name] = (err.code().name, err.details())
        outcome("unary", lambda: ch.unary_unary("/t.S/Unary")(b"hello"))
        outcome("4MiB", lambda: ch.unary_unary("/t.S/Unary")(BIG) == BIG)
        outcome("error-status", lambda: ch.unary_unary("/t.S/Fail")(b"x"))
        outcome("server-stream", lambda: list(ch.unary_stream("/t.S/Out")(b"5")))
        msgs = [b"x%d" % i for i in range(10000)]
        outcome("bidi-10000", lambda: list(ch.stream_stream("/t.S/Bidi")(iter(msgs))) == msgs)
        outcome("unknown-method", lambda: ch.unary_unary("/t.S/Nope")(b""))
        outcome("deadline", lambda: ch.unary_unary("/t.S/Slow")(b"z", timeout=0.2))
    return found


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("h2up-grpc")
    server = grpc.server(futures.ThreadPoolExecutor(8),
                         options=[("grpc.so_reuseport", 0), *OPTIONS])
    server.add_generic_rpc_handlers((_handlers(),))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    found: dict[str, dict[str, Any]] = {}
    try:
        for kind in ph.KINDS:
            port, admin = free_port(), free_port()
            log = tmp / f"{kind}.log"
            boot = us.bootstrap(port, admin, log, free_port(), grpc_port, free_port(),
                                free_port())
            hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            # a route timeout far above any call's run time: the 10,000-message stream
            # must not turn into a speed test on a loaded machine (the deadline case is
            # the client's 0.2 s, forwarded as grpc-timeout)
            hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"].insert(
                0, {"match": {"prefix": "/t.S/"}, "route": {"cluster": "grpc",
                                                           "timeout": "120s"}})
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(boot))
            with lp.loopback_proxy(kind, cfg, port):
                calls = _calls(port)
                lines = lp.wait_lines(log, len(calls))
            found[kind] = {"calls": calls, "log": lines}
    finally:
        server.stop(0)
    return found


def test_same_results(outcomes: dict[str, dict[str, Any]]) -> None:
    remora, envoy = outcomes["remora"]["calls"], outcomes["envoy"]["calls"]
    assert remora == envoy
    assert remora["unary"] == ("OK", b"hello")
    assert remora["4MiB"] == ("OK", True)
    assert remora["bidi-10000"] == ("OK", True)
    assert remora["error-status"] == ("NOT_FOUND", "no such thing")
    assert remora["deadline"][0] == "DEADLINE_EXCEEDED"


def test_same_access_log(outcomes: dict[str, dict[str, Any]]) -> None:
    remora, envoy = outcomes["remora"]["log"], outcomes["envoy"]["log"]
    # The deadline's line depends on a race: grpcio's server answers DEADLINE_EXCEEDED
    # (the grpc-timeout header is forwarded) at about the moment the client resets its
    # stream; whichever reaches the proxy first is logged (Envoy: usually the answer,
    # 200 DeadlineExceeded; remora: usually the reset, 0 DR http2.remote_reset).
    assert remora[:-1] == envoy[:-1]
    assert [line.split()[3:5] for line in remora] == [["HTTP/2", "HTTP/2"]] * 7
    assert [line.split()[5] for line in remora[:-1]] == [
        "OK", "OK", "NotFound", "OK", "OK", "Unimplemented"]
    assert remora[-1].split()[:3] in (["200", "-", "via_upstream"],
                                      ["0", "DR", "http2.remote_reset"])


