"""How long a downstream TLS handshake may take, held to a real Envoy 1.40 on loopback.

Envoy sets no limit by default: a filter chain's transport_socket_connect_timeout is
unset, and a client that sends nothing, or part of a ClientHello, keeps its connection
(observed past 14 s; tcp_proxy has connected upstream meanwhile). With the field set,
the connection is closed when it runs out: the listener counts
downstream_cx_transport_socket_connect_timeout, the access log's
%CONNECTION_TERMINATION_DETAILS% says "transport socket timeout was reached" (spaces
kept) and there is no failure reason and no ssl.* counter. A client that gives up in the
middle of its ClientHello is no TLS error either. Before, remora closed every downstream
whose handshake had not finished in 10 s (with an ssl.connection_error and a failure
reason of its own words) and ignored the field.
One bootstrap, run by `envoy` and by `remora proxy` at the same time (each_kind): the
test waits 12 s once for both. Needs the envoy binary; no root."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port, static_cluster

pytestmark = pytest.mark.envoy

LOG = ("%DOWNSTREAM_REMOTE_ADDRESS% %RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS% "
       "%DOWNSTREAM_TRANSPORT_FAILURE_REASON% %DOWNSTREAM_TLS_VERSION% %BYTES_RECEIVED%\n")
PARTIAL = b"\x16\x03\x01\x00\x50"  # a handshake record's header, its ClientHello never comes
WAIT = 12.0  # past remora's former 10 s
COUNTERS = ("downstream_cx_transport_socket_connect_timeout", "ssl.connection_error",
            "ssl.handshake")


def _bootstrap(ports: dict[str, int], admin: int, backend: int, certs: Path,
               logs: Path) -> dict[str, Any]:
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}]}

    def listener(name: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "address": addr("127.0.0.1", ports[name]), "filter_chains": [{
            "name": name, **extra, "filters": [{
                "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": TCP_PROXY, "stat_prefix": name, "cluster": "backend",
                    "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": FILE_LOG, "path": str(logs / f"{name}.log"),
                        "log_format": {"text_format_source": {"inline_string": LOG}}}}]}}],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": th.PREFIX + "DownstreamTlsContext", "common_tls_context": common}}}]}
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [listener("unset", {}),
                      listener("limited", {"transport_socket_connect_timeout": "1s"})],
        "clusters": [static_cluster("backend", backend)]}}


def _client(port: int, data: bytes, out: dict[int, tuple[float, str]]) -> None:
    """Connect, send DATA, wait up to WAIT for the proxy to close; then close: when and
    how it ended, by the client's port."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        local = sock.getsockname()[1]
        sock.settimeout(WAIT)
        start = time.monotonic()
        sock.sendall(data)
        try:
            ended = "closed" if sock.recv(100) == b"" else "data"
        except TimeoutError:
            ended = "open"
        except OSError as exc:
            ended = type(exc).__name__
        out[local] = (time.monotonic() - start, ended)


def _story(kind: str, certs: Path, tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()

    def handle(conn: socket.socket) -> None:
        conn.settimeout(WAIT + 5)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    backend = lp.thread_server(handle, threaded=True)
    ports = {"unset": free_port(), "limited": free_port()}
    admin = free_port()
    config = tmp / f"{kind}.json"
    config.write_text(json.dumps(_bootstrap(ports, admin, backend.getsockname()[1], certs,
                                            logs)))
    out: dict[str, Any] = {}
    try:
        with lp.loopback_proxy(kind, config, *ports.values(), admin):
            for name in ports:  # the start probes' lines, then the clients'
                lp.wait_lines(logs / f"{name}.log", 1)
            ended: dict[int, tuple[float, str]] = {}
            clients = {(name, what): threading.Thread(target=_client, args=(
                ports[name], data, ended)) for name in ports
                for what, data in (("silent", b""), ("partial", PARTIAL))}
            for thread in clients.values():
                thread.start()
            for thread in clients.values():
                thread.join()
            stats = {}
            for line in lp.admin_text(admin, "/stats").splitlines():
                name, _, value = line.partition(": ")
                for listener, port in ports.items():
                    prefix = f"listener.127.0.0.1_{port}."
                    if name.startswith(prefix) and name[len(prefix):] in COUNTERS:
                        stats[f"{listener}.{name[len(prefix):]}"] = int(value)
            for name in ports:
                lines = lp.wait_lines(logs / f"{name}.log", 3)
                for line in lines[1:]:
                    local = int(line.split(" ", 1)[0].rsplit(":", 1)[1])
                    out[(name, line)] = local
            out = {"ended": ended, "lines": out, "stats": stats}
    finally:
        backend.close()
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-handshake-timeout")
    CertificateAuthority(tmp / "ca").ensure_workload(tmp / "server", "demo")
    return lp.each_kind(lambda kind: _story(kind, tmp / "server", tmp))


def test_no_limit_by_default_and_the_chains_limit_when_set(
        outcomes: dict[str, dict[str, Any]]) -> None:
    for kind in ("envoy", "remora"):
        story = outcomes[kind]
        when = sorted((name, end[1], round(end[0])) for (name, _), local in
                      story["lines"].items() for end in [story["ended"][local]])
        assert when == [("limited", "closed", 1), ("limited", "closed", 1),
                        ("unset", "open", round(WAIT)), ("unset", "open", round(WAIT))], kind


def test_logged_and_counted_as_on_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = sorted(line.split(" ", 1)[1] for _, line in outcomes["envoy"]["lines"])
    assert envoy == 2 * ["- - - TLSv1.2 0"] + \
        2 * ["- transport socket timeout was reached - TLSv1.2 0"]
    assert sorted(line.split(" ", 1)[1] for _, line in outcomes["remora"]["lines"]) == envoy
    assert {k: v for k, v in outcomes["envoy"]["stats"].items() if v} == {
        "limited.downstream_cx_transport_socket_connect_timeout": 2}
    assert {k: v for k, v in outcomes["remora"]["stats"].items() if v} == \
        {k: v for k, v in outcomes["envoy"]["stats"].items() if v}
