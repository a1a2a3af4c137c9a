"""The gRPC demo apps with grpcio as the judge: the server prints the peer of each call,
the client prints each call's gRPC status (OK 0, UNAVAILABLE 14, DEADLINE_EXCEEDED 4)."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import time

from remora.apps import grpc_client, grpc_server
from remora.lab.images import ImageMap


def test_server_logs_each_peer_and_client_prints_status() -> None:
    out = io.StringIO()
    server, port = grpc_server.start("127.0.0.1", 0, out)
    try:
        with grpc_client.channel(f"127.0.0.1:{port}") as ch:
            stub = ch.unary_unary(grpc_server.FULL_METHOD)
            lines = [grpc_client.call(stub, 5.0) for _ in range(2)]
            # a method the server does not have: UNIMPLEMENTED (12), from grpcio itself
            other = ch.unary_unary("/remora.demo.Simple/Nope")
            missing = grpc_client.call(other, 5.0)
    finally:
        server.stop(0)
    assert lines == [f"status=OK code=0 reply={grpc_server.BODY.decode()}"] * 2
    assert missing.startswith("status=UNIMPLEMENTED code=12")
    logged = out.getvalue().splitlines()
    assert len(logged) == 2
    peers = [re.fullmatch(r"Method=/remora\.demo\.Simple/Sauth, Peer=ipv4:127\.0\.0\.1:(\d+)",
                          line) for line in logged]
    assert all(peers)
    # one HTTP/2 connection for both calls, as the Go client keeps its connection
    assert len({m.group(1) for m in peers if m}) == 1


def test_client_reports_unavailable_and_deadline() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with grpc_client.channel(f"127.0.0.1:{port}") as ch:
        line = grpc_client.call(ch.unary_unary(grpc_server.FULL_METHOD), 2.0)
    assert line.startswith("status=UNAVAILABLE code=14 details=")
    # a listener that never speaks HTTP/2: the deadline ends the call
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        with grpc_client.channel(f"127.0.0.1:{mute.getsockname()[1]}") as ch:
            started = time.monotonic()
            line = grpc_client.call(ch.unary_unary(grpc_server.FULL_METHOD), 0.5)
        assert time.monotonic() - started < 5
    assert line.startswith("status=DEADLINE_EXCEEDED code=4"), line


def test_commands_as_the_image_map_runs_them() -> None:
    images = ImageMap()
    server_argv = images.command({"name": "demo", "image": "vasth/simple-grpc-server:latest"},
                                 "pod")
    client_argv = images.command({"name": "demo", "image": "docker.io/vasth/simple-grpc-client"},
                                 "pod")
    assert server_argv == [sys.executable, "-m", "remora.apps.grpc_server"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*server_argv, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run([*client_argv, "--target", f"127.0.0.1:{port}",
                                 "--interval", "0.3", "--count", "2"],
                                capture_output=True, text=True, timeout=30)
        # a port in use is an error line and exit 1, not a second server beside it
        again = subprocess.run([*server_argv, "--host", "127.0.0.1", "--port", str(port)],
                               capture_output=True, text=True, timeout=20)
    finally:
        server.terminate()
        server_out, _ = server.communicate(timeout=10)
    assert client.stdout.splitlines() == [
        f"status=OK code=0 reply={grpc_server.BODY.decode()}"] * 2, client.stderr
    assert re.findall(r"Peer=ipv4:127\.0\.0\.1:\d+", server_out) and \
        len(server_out.splitlines()) == 2
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == f"listen tcp :{port}: cannot bind"
