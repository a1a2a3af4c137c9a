"""explain's HTTP/2 probe without a lab: the protocol a destination's port gets (Istio's
selection), the h2c / gRPC request itself against real servers on loopback (grpcio's
server, an h2c server on the `h2` library, an HTTP/1.1-only one), and the app lines that
name the peer (the seed's RemoteAddr=, grpcio's Peer=)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from remora.apps import grpc_server
from remora.controlplane import protocol
from remora.diagnose.evidence import lab_probe
from remora.diagnose.evidence.target import resolve_destination
from remora.diagnose.facts import app_peer
from tests.unit.diagnose.test_live_target import PODS, pod
from tests.unit.proxy.http2 import grpc_harness

RID = "4acb991e-9d9e-47f5-b2dc-6860b9aa4598"


def service(name: str, port_name: str, app_protocol: str | None = None) -> dict[str, Any]:
    port: dict[str, Any] = {"name": port_name, "port": 18080, "targetPort": 18080}
    if app_protocol:
        port["appProtocol"] = app_protocol
    return {"metadata": {"name": name, "namespace": "demo-to"},
            "spec": {"clusterIP": "172.16.1.172", "selector": {"web": "grpc-server"},
                     "ports": [port]}}


GRPC_POD = pod("simple-grpc-server-a1b2c-d3e4f", "demo-to", "10.20.0.79",
               {"web": "grpc-server"}, ports=[18080])


@pytest.mark.parametrize(("port_name", "app", "want"), [
    ("grpc", None, protocol.GRPC), ("http2-api", None, protocol.HTTP2),
    ("", "kubernetes.io/h2c", protocol.HTTP2), ("http", None, protocol.HTTP),
    ("", None, protocol.UNSUPPORTED), ("tcp", "grpc", protocol.GRPC)])
def test_the_destination_carries_the_ports_istio_protocol(port_name: str, app: str | None,
                                                          want: str) -> None:
    services = [service("simple-grpc-server-svc", port_name, app)]
    pods = [*PODS, GRPC_POD]
    by_service = resolve_destination("simple-grpc-server-svc.demo-to", "demo-from",
                                     services, pods)
    assert by_service.protocol == want
    # a pod target: the protocol of the Service port that targets the pod's port
    by_pod = resolve_destination("10.20.0.79:18080", "demo-from", services, pods)
    assert (by_pod.kind, by_pod.protocol) == ("pod", want)
    # a pod port no Service targets: no protocol known (the probe stays HTTP/1.1)
    assert resolve_destination("10.20.0.79:9999", "demo-from", services, pods).protocol == ""


@pytest.fixture(scope="module")
def grpc_app() -> Iterator[tuple[int, io.StringIO]]:
    out = io.StringIO()
    server, port = grpc_server.start("127.0.0.1", 0, out=out)
    try:
        yield port, out
    finally:
        server.stop(None).wait(5)


def test_grpc_probe_reaches_the_method(grpc_app: tuple[int, io.StringIO]) -> None:
    port, out = grpc_app
    r = lab_probe.probe_h2(None, "127.0.0.1", port, f"simple-grpc-server-svc.demo-to:{port}",
                           grpc_server.FULL_METHOD, RID, grpc=True)
    assert (r.error, r.status, r.status_line, r.grpc_status) == ("", 200, "HTTP/2 200", 0)
    assert (r.method, r.protocol, r.grpc) == ("POST", "HTTP/2", True)
    assert r.response_headers["content-type"] == "application/grpc"
    assert r.summary().startswith(
        f"POST http://simple-grpc-server-svc.demo-to:{port}/remora.demo.Simple/Sauth (gRPC "
        "over HTTP/2, h2c) -> HTTP/2 200, grpc-status 0 OK (")
    assert r.summary().endswith(f"x-request-id {RID})")
    # the server logged the probe's own socket: what the live form matches the app line by
    lines = [x for x in out.getvalue().splitlines() if r.local_address in x]
    assert lines and app_peer(lines[-1]) == (f"Peer=ipv4:{r.local_address}", r.local_address)


def test_grpc_probe_on_the_root_path_is_a_health_check(
        grpc_app: tuple[int, io.StringIO]) -> None:
    port, _ = grpc_app
    r = lab_probe.probe_h2(None, "127.0.0.1", port, "a:1", "/", RID, grpc=True)
    assert r.url == "http://a:1/grpc.health.v1.Health/Check"
    # the demo server has no health service: grpcio answers UNIMPLEMENTED (trailers-only)
    assert (r.status, r.grpc_status, r.grpc_message) == (200, 12, "Method not found!")
    assert "grpc-status 12 UNIMPLEMENTED (Method not found!)" in r.summary()


def test_h2c_probe_of_a_plain_http2_server() -> None:
    with grpc_harness.h2c_backend() as port:
        r = lab_probe.probe_h2(None, "127.0.0.1", port, "web.demo-to:8080", "/hello", RID)
    assert (r.error, r.status, r.method, r.grpc_status) == ("", 200, "GET", None)
    assert r.response_headers["x-backend"] == "h2c"
    assert r.summary().startswith("GET http://web.demo-to:8080/hello (HTTP/2, h2c) -> "
                                  "HTTP/2 200 (")


def test_an_http1_only_server_and_a_closed_port_are_failures_said() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close"
                     b"\r\n\r\n")
        conn.close()
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    r = lab_probe.probe_h2(None, "127.0.0.1", port, "a:1", "/", RID)
    t.join(5)
    listener.close()
    assert r.status is None and r.error.startswith("the answer is not HTTP/2")
    assert "failed: the answer is not HTTP/2" in r.summary()
    refused = lab_probe.probe_h2(None, "127.0.0.1", port, "a:1", "/", RID, grpc=True)
    assert refused.status is None and refused.error.startswith("ConnectionRefusedError")


def test_app_peer_reads_go_and_grpc_lines() -> None:
    assert app_peer("RemoteAddr=127.0.0.6:43122, Method=GET") == (
        "RemoteAddr=127.0.0.6:43122", "127.0.0.6:43122")
    assert app_peer("Method=/remora.demo.Simple/Sauth, Peer=ipv4:10.20.0.78:5000") == (
        "Peer=ipv4:10.20.0.78:5000", "10.20.0.78:5000")
    assert app_peer("Method=/x, Peer=ipv6:%5B::6%5D:5000") == (
        "Peer=ipv6:%5B::6%5D:5000", "[::6]:5000")
    assert app_peer("Peer=ipv6:[fd00::78]:5000") == ("Peer=ipv6:[fd00::78]:5000",
                                                     "[fd00::78]:5000")
    assert app_peer("nothing to see") is None
