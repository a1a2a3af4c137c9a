"""The seed's demo server and client on loopback: what the server prints, what it
answers, and how the client reuses, retries and reports errors like Go's http.Get."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remora.apps import simple_client, simple_server

BODY = b'{"code": 0, "status": "fail", "user": {"id": "test_common"}}'


class _Printed(io.StringIO):
    """stdout stand-in that the server thread writes to and the test reads."""

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@pytest.fixture
def server() -> Iterator[tuple[int, _Printed]]:
    out = _Printed()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.Server] = {}

    async def boot() -> None:
        holder["srv"] = await simple_server.start("127.0.0.1", 0, out)
        started.set()

    def run() -> None:
        loop.run_until_complete(boot())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    port = holder["srv"].sockets[0].getsockname()[1]
    yield port, out
    loop.call_soon_threadsafe(holder["srv"].close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_sauth_prints_xff_and_remote_and_answers_60_bytes(server: tuple[int, _Printed]) -> None:
    port, out = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(b"GET /common/sauth HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n"
                     b"X-Forwarded-For: 10.0.0.2\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert body == BODY
    assert head.startswith(b"HTTP/1.1 200 OK\r\nDate: ")
    assert b"\r\nContent-Length: 60\r\nContent-Type: text/plain; charset=utf-8\r\n" \
           b"Connection: close" in head + b"\r\n"
    assert out.lines() == [f"X-Forwarded-For=10.0.0.1, RemoteAddr=127.0.0.1:{local_port}"]


def test_other_paths_are_404_and_not_printed(server: tuple[int, _Printed]) -> None:
    port, out = server
    reply = _exchange(port, b"GET /common/sauth/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert reply.endswith(b"\r\n\r\n404 page not found\n")
    assert out.lines() == []


def test_keep_alive_serves_several_requests_on_one_connection(
    server: tuple[int, _Printed],
) -> None:
    port, out = server
    request = b"GET /common/sauth?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request * 3)  # pipelined: answered in order
        reply = b""
        while reply.count(BODY) < 3:
            reply += sock.recv(65536)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert len(out.lines()) == 3 and len(set(out.lines())) == 1


def test_malformed_request_gets_gos_400_and_close(server: tuple[int, _Printed]) -> None:
    port, _ = server
    reply = _exchange(port, b"GARBAGE\r\n\r\n")
    assert reply == (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     b"Connection: close\r\n\r\n400 Bad Request")
    missing_host = _exchange(port, b"GET /common/sauth HTTP/1.1\r\n\r\n")
    assert missing_host.endswith(b"400 Bad Request: missing required Host header")


def test_client_reuses_its_connection_like_gos_transport(server: tuple[int, _Printed]) -> None:
    port, out = server
    client = simple_client.Client(f"http://127.0.0.1:{port}/common/sauth", timeout=5)
    try:
        for _ in range(3):
            assert client.get() == (200, BODY)
    finally:
        client.close()
    remotes = {line.split("RemoteAddr=")[1] for line in out.lines()}
    assert len(out.lines()) == 3 and len(remotes) == 1


def _one_shot_server(replies: list[bytes]) -> tuple[int, threading.Thread]:
    """A loopback server that answers each accepted connection with the next reply
    (after reading one request) and then closes it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            for reply in replies:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_client_retries_once_when_idle_connection_was_closed() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    port, thread = _one_shot_server([ok, ok])  # closes after each answer
    client = simple_client.Client(f"http://127.0.0.1:{port}/", timeout=5)
    try:
        assert client.get() == (200, b"hi")
        time.sleep(0.05)
        assert client.get() == (200, b"hi")  # first attempt hit the closed socket
    finally:
        client.close()
    thread.join(5)


def test_client_reports_truncated_body_and_close_delimited_body() -> None:
    port, thread = _one_shot_server([
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close",
    ])
    client = simple_client.Client(f"http://127.0.0.1:{port}/", timeout=5)
    with pytest.raises(simple_client.ReadAllError, match="unexpected EOF"):
        client.get()
    assert client.get() == (200, b"until-close")
    thread.join(5)


def test_client_cli_prints_body_then_gos_error_text(server: tuple[int, _Printed]) -> None:
    port, _ = server
    ok = subprocess.run(
        [sys.executable, "-m", "remora.apps.simple_client", "--url",
         f"http://127.0.0.1:{port}/common/sauth", "--interval", "0", "--count", "2"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert ok.stdout == (BODY.decode() + "\n") * 2
    probe = socket.create_server(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    refused = subprocess.run(
        [sys.executable, "-m", "remora.apps.simple_client", "--url",
         f"http://127.0.0.1:{closed_port}/common/sauth", "--interval", "0", "--count", "1"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert refused.stdout == (
        f'Get err: Get "http://127.0.0.1:{closed_port}/common/sauth": '
        f"dial tcp 127.0.0.1:{closed_port}: connect: connection refused\n"
    )
    unknown = subprocess.run(
        [sys.executable, "-m", "remora.apps.simple_client", "--url",
         "http://simple-server-svc.demo-to.invalid:18080/common/sauth", "--interval", "0",
         "--count", "1"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert unknown.stdout.startswith('Get err: Get "http://simple-server-svc.demo-to.invalid:18080'
                                     '/common/sauth": dial tcp: lookup simple-server-svc')
    server = simple_client.nameserver()
    if server:  # Go names the DNS server it asked
        assert f" on {server}:53: " in unknown.stdout or f" on [{server}]:53: " in unknown.stdout


def test_nameserver_is_the_first_resolv_conf_entry(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch demo-from.svc.cluster.local\nnameserver 10.96.0.10\n"
                    "nameserver 10.96.0.11\n")
    assert simple_client.nameserver(str(conf)) == "10.96.0.10"
    assert simple_client.nameserver(str(tmp_path / "missing")) is None


def test_server_module_runs_and_prints_per_request() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "remora.apps.simple_server", "--host", "127.0.0.1", "--port",
         str(port)], stdout=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = _exchange(port, b"GET /common/sauth HTTP/1.0\r\n\r\n")
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        assert reply.endswith(b"\r\n\r\n" + BODY)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # flushed per line, so this does not block
        assert line.startswith("X-Forwarded-For=, RemoteAddr=127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(5)


def test_http10_close_and_keep_alive_headers_like_go(server: tuple[int, _Printed]) -> None:
    port, _ = server
    plain = _exchange(port, b"GET /common/sauth HTTP/1.0\r\n\r\n")
    assert b"\r\nConnection:" not in plain.split(b"\r\n\r\n")[0]
    assert plain.endswith(BODY)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /common/sauth HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = b""
        while not reply.endswith(BODY):
            reply += sock.recv(4096)
    assert b"\r\nConnection: keep-alive\r\n" in reply
    head_only = _exchange(port, b"HEAD /common/sauth HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert head_only.endswith(b"Content-Length: 60\r\nContent-Type: text/plain; charset=utf-8"
                              b"\r\nConnection: close\r\n\r\n")
