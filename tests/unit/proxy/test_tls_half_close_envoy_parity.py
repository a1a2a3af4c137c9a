"""tcp_proxy's half-close over TLS held to a real Envoy 1.40 on loopback.

One bootstrap, run once by `envoy` and once by `remora proxy`:
- ``to-tls``: a plain listener whose tcp_proxy goes to a TLS backend (an UpstreamTlsContext
  cluster): the client sends its request and a FIN; Envoy sends the backend a close_notify
  (SslSocket::doWrite(end_stream) -> shutdownSsl) and relays the backend's answer back.
- ``from-tls``: a TLS listener (mTLS) whose tcp_proxy goes to a plain backend: the client
  sends its request and a close_notify (no FIN); the backend gets a FIN and its answer
  reaches the client, followed by the listener's close_notify.
- ``mesh``: the mesh's real path, a plain listener whose tcp_proxy goes over mTLS to the
  proxy's own ``from-tls`` listener (client sidecar -> server sidecar), then to the plain
  backend.
- ``to-tls13`` and ``mesh13``: those two with TLS 1.3 toward the backend (a client's
  default highest version is TLS 1.2), whose server's session tickets can come after the
  client's close_notify.
Each backend reads until its input ends, then answers and closes; the answers, how each
input ended, the access log lines and the tcp/cluster byte counters must be the same in
both. Before remora half-closed over TLS, its backend never saw an end of input (the
"timeout" its read gives up with) and the client got no answer.
Needs the envoy binary; no root."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

PAYLOAD = b"request " * 5000  # 40000 bytes: several TLS records

# the byte counters of both ends of each tcp_proxy, its idle timeouts (none) and the
# connection counts (loopback_proxy's plain probe of the TLS listener is one too: tcp_proxy
# takes it and connects upstream before its handshake fails, in both)
COUNTERS = re.compile(r"^(tcp\.[a-z-]+\.(downstream_cx_(rx|tx)_bytes_total|idle_timeout|"
                      r"downstream_cx_total)|"
                      r"cluster\.[a-z-]+\.upstream_cx_(tx|rx)_bytes_total|"
                      r"cluster\.[a-z-]+\.upstream_cx_total): \d+$")


def _ends(ends: list[tuple[int, str]]) -> list[str]:
    return [end for size, end in ends if size == len(PAYLOAD)]


def _client_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """PATH's lines of the clients' connections, once there are COUNT (a proxy writes
    them a little after the connection ends), or those there after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [line for line in text.splitlines() if line.startswith(f"{len(PAYLOAD)} ")]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _story(kind: str, certs: Path, tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()
    tls_ends: list[tuple[int, str]] = []
    plain_ends: list[tuple[int, str]] = []
    tls_srv = th.tls_backend(th.server_context(certs), tls_ends)
    plain_srv = th.plain_backend(plain_ends)
    greeted_ends: list[tuple[int, str]] = []
    greeter = th.greeting_backend(th.server_context(certs), greeted_ends)
    greeted_fin_ends: list[tuple[int, str]] = []
    greeter_fin = th.greeting_backend(th.server_context(certs), greeted_fin_ends,
                                      close_notify=False)
    ports = {name: free_port() for name in th.PATHS}
    admin = free_port()
    config = tmp / f"{kind}.json"
    config.write_text(json.dumps(th.bootstrap(
        ports, admin, tls_srv.getsockname()[1], plain_srv.getsockname()[1], certs, logs,
        greeter.getsockname()[1], greeter_fin.getsockname()[1])))
    out: dict[str, Any] = {}
    try:
        with lp.loopback_proxy(kind, config, *ports.values(), admin):
            # the backends' ends of the clients' connections (loopback_proxy's probes
            # of the listeners went through too, without a byte)
            for name in ("to-tls", "to-tls13"):
                tls_ends.clear()
                out[name] = (*th.plain_client(ports[name], PAYLOAD), _ends(tls_ends))
            plain_ends.clear()
            out["from-tls"] = (*th.tls_client(ports["from-tls"], th.client_context(certs),
                                              PAYLOAD), _ends(plain_ends))
            for name in ("mesh", "mesh13"):
                plain_ends.clear()
                out[name] = (*th.plain_client(ports[name], PAYLOAD), _ends(plain_ends))
            out["greeted"] = (*th.plain_client_greeted(ports["greeted"], PAYLOAD),
                              th.backend_ends(greeted_ends, len(PAYLOAD)))
            out["greeted-fin"] = (*th.plain_client_greeted(ports["greeted-fin"], PAYLOAD),
                                  th.backend_ends(greeted_fin_ends, len(PAYLOAD)))
            # the clients' lines (the mesh clients' second hops are from-tls lines, of
            # TLS 1.2, Envoy's default highest for a client, and of TLS 1.3), not the
            # probes'
            out["log"] = sorted(
                line for name, count in (("from-tls", 3), ("to-tls", 1), ("to-tls13", 1),
                                         ("mesh", 1), ("mesh13", 1), ("greeted", 1),
                                         ("greeted-fin", 1))
                for line in _client_lines(logs / f"{name}.log", count))
            stats = lp.admin_text(admin, "/stats")
            out["stats"] = sorted(m.group(0) for line in stats.splitlines()
                                  if (m := COUNTERS.match(line)))
            # a TLS client that shuts its socket down after its close_notify, and one
            # that ends with the FIN alone
            for name, close_notify in (("from-tls-fin", True), ("from-tls-fin-only", False)):
                plain_ends.clear()
                out[name] = (*th.tls_client(ports["from-tls"], th.client_context(certs),
                                            PAYLOAD, fin=True, close_notify=close_notify),
                             th.backend_ends(plain_ends, len(PAYLOAD)))
            out["fin-log"] = _client_lines(logs / "from-tls.log", 5)[3:]
    finally:
        tls_srv.close()
        plain_srv.close()
        greeter.close()
        greeter_fin.close()
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-half-close")
    certs = tmp / "certs"
    CertificateAuthority(tmp / "ca").ensure_workload(certs, "demo")
    return lp.each_kind(lambda kind: _story(kind, certs, tmp))


ANSWER = th.answer(PAYLOAD)


def test_a_backend_that_half_closes_first_still_gets_the_input_as_on_envoy(
        outcomes: dict[str, dict[str, Any]]) -> None:
    """The backend's greeting and close_notify reach the client as the greeting and a
    FIN; the client's input after it still reaches the backend, ended by a close_notify."""
    assert outcomes["envoy"]["greeted"] == (th.GREETING, "fin", ["close_notify"])
    assert outcomes["remora"]["greeted"] == outcomes["envoy"]["greeted"]


def test_a_backend_fin_without_close_notify_is_its_end_as_on_envoy(
        outcomes: dict[str, dict[str, Any]]) -> None:
    """A TLS backend that half-closes with a FIN alone: Envoy's SslSocket reads the
    socket's EOF as an end of stream, the client gets the greeting and a FIN, and its
    input still reaches the backend (before, remora closed both ways on the FIN: the
    backend got nothing)."""
    assert outcomes["envoy"]["greeted-fin"] == (th.GREETING, "fin", ["close_notify"])
    assert outcomes["remora"]["greeted-fin"] == outcomes["envoy"]["greeted-fin"]


@pytest.mark.parametrize("path, end, backend_end", [
    ("to-tls", "fin", "close_notify"),
    ("to-tls13", "fin", "close_notify"),
    ("from-tls", "close_notify", "fin"),
    ("mesh", "fin", "fin"),
    ("mesh13", "fin", "fin"),
])
def test_half_close_passes_through_tls_as_envoy(outcomes: dict[str, dict[str, Any]], path: str,
                                                 end: str, backend_end: str) -> None:
    envoy, remora = outcomes["envoy"][path], outcomes["remora"][path]
    # what Envoy does (observed on 1.40): the backend's input ends, its answer comes back
    assert envoy == (ANSWER, end, [backend_end]), envoy
    assert remora == envoy


def test_envoy_answers_a_fin_after_the_close_notify(
        outcomes: dict[str, dict[str, Any]]) -> None:
    """A TLS client that shuts its socket down after its close_notify, or instead of one:
    Envoy 1.40 still answers (the backend gets a FIN, the client the answer and a
    close_notify): its SslSocket reads the socket's EOF as an end of stream, as it reads
    a close_notify."""
    assert outcomes["envoy"]["from-tls-fin"] == (ANSWER, "close_notify", ["fin"])
    assert outcomes["envoy"]["from-tls-fin-only"] == (ANSWER, "close_notify", ["fin"])
    assert outcomes["envoy"]["fin-log"] == [
        f"{len(PAYLOAD)} {len(ANSWER)} - plain-backend TLSv1.3 -"] * 2


@pytest.mark.parametrize("path", ["from-tls-fin", "from-tls-fin-only"])
def test_a_fin_after_the_close_notify_still_gets_the_answer_as_on_envoy(
        outcomes: dict[str, dict[str, Any]], path: str) -> None:
    """Before, uvloop's SSLProtocol closed the connection both ways on the TCP FIN
    (eof_received): the backend got its FIN, the client no answer."""
    assert outcomes["remora"][path] == outcomes["envoy"][path]


def test_the_fin_connections_log_as_on_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    assert outcomes["remora"]["fin-log"] == outcomes["envoy"]["fin-log"]


def test_access_log_and_counters_same_as_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    assert outcomes["envoy"]["log"] == sorted([
        f"{len(PAYLOAD)} {len(ANSWER)} - {cluster} {version} -" for cluster, version in (
            ("mesh", "-"), ("mesh-13", "-"), ("plain-backend", "TLSv1.2"),
            ("plain-backend", "TLSv1.3"), ("plain-backend", "TLSv1.3"), ("tls-backend", "-"),
            ("tls-backend-13", "-"))] + [f"{len(PAYLOAD)} {len(th.GREETING)} - {greeter} - -"
                                      for greeter in ("greeter", "greeter-fin")])
    assert outcomes["remora"]["log"] == outcomes["envoy"]["log"]
    assert outcomes["remora"]["stats"] == outcomes["envoy"]["stats"]
