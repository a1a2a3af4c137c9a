"""remora.node.probes against real servers on loopback (the caller's own namespace): the
results and messages of kubelet's prober (pkg/probe/http, tcp, exec; prober.go)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from remora.node import podspec, probes
from remora.node.probes import Outcome, Probe

SEEN: list[tuple[str, dict[str, str]]] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        SEEN.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        path = self.path
        if path.startswith("/status/"):
            self._answer(int(path.rsplit("/", 1)[1]), b"status")
        elif path == "/slow":
            time.sleep(1.5)
            self._answer(200, b"late")
        elif path.startswith("/hop/"):
            n = int(path.rsplit("/", 1)[1])
            self._answer(302, b"", location=f"/hop/{n + 1}" if n < 30 else "/ok")
        elif path == "/elsewhere":
            self._answer(301, b"moved", location="http://localhost:1/ok")
        elif path == "/to-ok":
            self._answer(302, b"", location="/ok")
        else:
            self._answer(200, b"ok")

    def _answer(self, status: int, body: bytes, location: str = "") -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the probe that timed out closed its connection: expected


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def http(port: int, path: str, **kw: object) -> Probe:
    return Probe("httpGet", port=port, host="127.0.0.1", path=path, **kw)  # type: ignore[arg-type]


def test_http_status_decides_and_the_failure_text_is_kubelets(port: int) -> None:
    assert probes.run(http(port, "/ok"), None) == probes.Result(Outcome.SUCCESS, "ok")
    assert probes.run(http(port, "/status/204"), None).outcome is Outcome.SUCCESS
    assert probes.run(http(port, "/status/399"), None).ok
    for code in (400, 404, 500, 503):
        assert probes.run(http(port, f"/status/{code}"), None) == probes.Result(
            Outcome.FAILURE, f"HTTP probe failed with statuscode: {code}")


def test_http_request_headers_as_kubelet_sends_them(port: int) -> None:
    SEEN.clear()
    probes.run(http(port, "/ok"), None)
    path, headers = SEEN[-1]
    assert path == "/ok"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["user-agent"] == "kube-probe/1.32" and headers["accept"] == "*/*"
    assert headers["connection"] == "close" and "accept-encoding" not in headers
    probes.run(http(port, "/ok", headers=(("Host", "web.local"), ("X-Probe", "1"),
                                          ("Accept", ""))), None)
    _, headers = SEEN[-1]
    assert headers["host"] == "web.local" and headers["x-probe"] == "1"
    assert "accept" not in headers  # request.go: an Accept given empty is removed


def test_redirects_are_followed_to_the_same_host_only(port: int) -> None:
    SEEN.clear()
    assert probes.run(http(port, "/to-ok"), None) == probes.Result(Outcome.SUCCESS, "ok")
    assert [p for p, _ in SEEN] == ["/to-ok", "/ok"]
    assert SEEN[1][1]["referer"] == f"http://127.0.0.1:{port}/to-ok"
    assert SEEN[1][1]["user-agent"] == "kube-probe/1.32"
    # another host: the 3xx itself ends the probe, a success with a warning
    assert probes.run(http(port, "/elsewhere"), None) == probes.Result(
        Outcome.WARNING, "Probe terminated redirects, Response body: moved")
    # Go's client stops after 10 requests
    result = probes.run(http(port, "/hop/0"), None)
    assert result == probes.Result(
        Outcome.FAILURE, 'Get "/hop/10": stopped after 10 redirects')  # the Location as given


def test_http_timeout_and_refused_connection(port: int) -> None:
    started = time.monotonic()
    result = probes.run(http(port, "/slow", timeout=0.5), None)
    assert time.monotonic() - started < 1.4
    assert result == probes.Result(
        Outcome.FAILURE, f'Get "http://127.0.0.1:{port}/slow": context deadline exceeded '
                         "(Client.Timeout exceeded while awaiting headers)")
    closed = _closed_port()
    assert probes.run(http(closed, "/healthz"), None) == probes.Result(
        Outcome.FAILURE, f'Get "http://127.0.0.1:{closed}/healthz": dial tcp '
                         f"127.0.0.1:{closed}: connect: connection refused")


def test_tcp_probe(port: int) -> None:
    assert probes.run(Probe("tcpSocket", port=port, host="127.0.0.1"), None).ok
    closed = _closed_port()
    assert probes.run(Probe("tcpSocket", port=closed, pod_ip="10.20.0.3"), None) == \
        probes.Result(Outcome.FAILURE,
                      f"dial tcp 10.20.0.3:{closed}: connect: connection refused")


def test_exec_probe_exit_code_output_and_timeout() -> None:
    env = {"PATH": "/usr/bin:/bin", "WHO": "me"}
    ok = Probe("exec", command=("sh", "-c", "echo $WHO"), env=env)
    assert probes.run(ok, None) == probes.Result(Outcome.SUCCESS, "me\n")
    bad = Probe("exec", command=("sh", "-c", "echo not yet >&2; exit 3"), env=env)
    assert probes.run(bad, None) == probes.Result(Outcome.FAILURE, "not yet\n")
    slow = Probe("exec", command=("sleep", "5"), env=env, timeout=0.3)
    assert probes.run(slow, None) == probes.Result(Outcome.FAILURE,
                                                   'command "sleep 5" timed out')


def test_podspec_reads_every_probe_field() -> None:
    container = {"name": "c", "command": ["x"], "ports": [{"name": "web",
                                                            "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "healthz", "port": "web",
                                                "httpHeaders": [{"name": "X", "value": "1"}]},
                                    "periodSeconds": 2, "timeoutSeconds": 3,
                                    "successThreshold": 2, "failureThreshold": 4,
                                    "initialDelaySeconds": 5},
                 "startupProbe": {"exec": {"command": ["cat", "/tmp/up"]}}}
    ready = podspec.probe(container, "10.20.0.3")
    assert ready == Probe("httpGet", port=8080, pod_ip="10.20.0.3", path="healthz",
                          headers=(("X", "1"),), period=2, delay=5, timeout=3, success=2,
                          failure=4)
    assert ready.url == "http://10.20.0.3:8080/healthz"
    startup = podspec.probe(container, "10.20.0.3", "startupProbe")
    assert startup is not None and startup.command == ("cat", "/tmp/up")
    assert (startup.period, startup.timeout, startup.success, startup.failure) == (10, 1, 1, 3)
    assert podspec.probe(container, "10.20.0.3", "livenessProbe") is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_thresholds_count_results_in_a_row_as_kubelets_worker() -> None:
    """worker.go doProbe: a result becomes the container's only after successThreshold
    successes or failureThreshold failures in a row; a different result restarts the
    count."""
    from remora.node.supervisor import Supervisor, _ProbeState

    probe = Probe("tcpSocket", port=1, success=2, failure=3)
    state = _ProbeState()
    seen = [Supervisor._count(state, ok, probe)
            for ok in (True, True, False, False, True, False, False, False, False, True, True)]
    assert seen == [None, True, None, None, None, None, None, False, False, None, True]


def test_https_probe_skips_certificate_verification(tmp_path: Path) -> None:
    """scheme HTTPS: kubelet's probe transport has InsecureSkipVerify, so a certificate
    from a CA nobody trusts still answers the probe."""
    import ssl

    from remora.kubeapi import certs

    creds = certs.ensure(tmp_path)  # a serving certificate of a private CA
    server = Server(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(creds.cert, creds.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        assert probes.run(http(port, "/ok", scheme="HTTPS"), None) == probes.Result(
            Outcome.SUCCESS, "ok")
        assert probes.run(http(port, "/status/500", scheme="HTTPS"), None) == probes.Result(
            Outcome.FAILURE, "HTTP probe failed with statuscode: 500")
    finally:
        server.shutdown()
        server.server_close()
