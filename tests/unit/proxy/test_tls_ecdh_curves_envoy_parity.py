"""Key exchange groups: Envoy's defaults (X25519 and P-256, ContextConfigImpl
DEFAULT_CURVES, on listeners and clusters) and tls_params.ecdh_curves, held to a real
Envoy 1.40 on loopback.

OpenSSL's default list adds X448, P-384, P-521 and the FFDHE groups: remora's cluster
completed a handshake with a backend that accepts only P-384, which Envoy's cannot
(its ClientHello offers X25519 and P-256 only), and a listener served a client offering
only P-384 (test_tls_failed_handshake_details_envoy_parity). With ecdh_curves [P-384]
both sides speak P-384 and nothing else. One bootstrap, run by `envoy` and by `remora
proxy`. Needs the envoy binary; no root."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import FILE_LOG, TCP_PROXY, addr, free_port, static_cluster

pytestmark = pytest.mark.envoy

LOG = "%RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON% %DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n"
P384 = {"ecdh_curves": ["P-384"]}
TLS13 = {"tls_maximum_protocol_version": "TLSv1_3"}


def _bootstrap(ports: dict[str, int], admin: int, backend: int, echo: int, certs: Path,
               logs: Path) -> dict[str, Any]:
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}]}

    def listener(name: str, cluster: str, tls_params: dict[str, Any] | None) -> dict[str, Any]:
        chain: dict[str, Any] = {"filters": [{
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster,
                "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                    "@type": FILE_LOG, "path": str(logs / f"{name}.log"),
                    "log_format": {"text_format_source": {"inline_string": LOG}}}}]}}]}
        if tls_params is not None:
            chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": th.PREFIX + "DownstreamTlsContext",
                "common_tls_context": {**common, "tls_params": tls_params}}}
        return {"name": name, "address": addr("127.0.0.1", ports[name]),
                "filter_chains": [chain]}

    def tls_cluster(name: str, tls_params: dict[str, Any]) -> dict[str, Any]:
        return static_cluster(name, backend, transport_socket={
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": th.PREFIX + "UpstreamTlsContext",
                "common_tls_context": {"tls_params": tls_params}}})
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [listener("default-up", "default", None),
                      listener("p384-up", "p384", None),
                      listener("p384-down", "echo", P384)],
        # TLS 1.3: in TLS 1.2 the backend's P-256 certificate would need P-256 offered
        "clusters": [tls_cluster("default", TLS13), tls_cluster("p384", {**P384, **TLS13}),
                     static_cluster("echo", echo)]}}


def _through(port: int) -> bytes:
    """A plain client: a request, its end, and what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        got = b""
        try:  # the proxy may have closed it already (its upstream handshake failed)
            sock.sendall(b"hello")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                got += chunk
        except OSError:
            pass
        return got


def _tls_client(port: int, curve: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ecdh_curve(curve)  # the ClientHello's groups: this one only
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            with ctx.wrap_socket(sock) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                return tls.recv(12).decode()
        except ssl.SSLError as exc:
            return f"alert {exc.reason}"


def _story(kind: str, certs: Path, tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()
    server = th.server_context(certs)
    server.set_ecdh_curve("secp384r1")  # the backend's only group
    ends: list[tuple[int, str]] = []
    backend = th.tls_backend(server, ends)
    ports = {name: free_port() for name in ("default-up", "p384-up", "p384-down")}
    admin = free_port()
    config = tmp / f"{kind}.json"
    out: dict[str, Any] = {}
    try:
        with lp.echo_backend() as echo:
            config.write_text(json.dumps(_bootstrap(ports, admin, backend.getsockname()[1],
                                                    echo, certs, logs)))
            with lp.loopback_proxy(kind, config, *ports.values(), admin):
                skip = {name: len(lp.wait_lines(logs / f"{name}.log", 1)) for name in ports}
                out["default-up"] = _through(ports["default-up"])
                out["p384-up"] = _through(ports["p384-up"])
                out["p384-down P-384"] = _tls_client(ports["p384-down"], "secp384r1")
                out["p384-down X25519"] = _tls_client(ports["p384-down"], "X25519")
                for name, count in (("default-up", 1), ("p384-up", 1), ("p384-down", 2)):
                    # in the order the connections ended
                    out[f"{name} log"] = sorted(lp.wait_lines(
                        logs / f"{name}.log", skip[name] + count)[skip[name]:])
    finally:
        backend.close()
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-ecdh-curves")
    CertificateAuthority(tmp / "ca").ensure_workload(tmp / "server", "demo")
    return lp.each_kind(lambda kind: _story(kind, tmp / "server", tmp))


def test_groups_as_on_envoy(outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = outcomes["envoy"]
    assert envoy["default-up"] == b""  # the handshake with the P-384 backend failed
    assert envoy["p384-up"] == th.answer(b"hello")
    assert envoy["p384-down P-384"] == "HTTP/1.1 200"
    assert envoy["p384-down X25519"] == "alert SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert envoy["p384-down log"][0] == "- - -"
    assert envoy["p384-down log"][1].endswith(
        "TLS_error:|268435722:SSL_routines:OPENSSL_internal:NO_SHARED_GROUP:TLS_error_end")
    assert {k: v for k, v in outcomes["remora"].items() if k != "default-up log"} == \
        {k: v for k, v in envoy.items() if k != "default-up log"}


def test_the_failed_upstream_handshake_is_logged_as_on_envoy(
        outcomes: dict[str, dict[str, Any]]) -> None:
    """The backend closes without an alert (th.TlsHalfClose does not flush it): no
    failure reason, as BoringSSL's error queue is empty."""
    assert outcomes["envoy"]["default-up log"][0] == "UF,URX - -"
    assert outcomes["remora"]["default-up log"] == outcomes["envoy"]["default-up log"]
