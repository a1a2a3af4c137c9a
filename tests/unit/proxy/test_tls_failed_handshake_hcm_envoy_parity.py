"""A failed downstream TLS handshake on an HTTP connection manager chain, held to a real
Envoy 1.40 on loopback: the connection manager logs nothing (no request), the listener's
access log logs the connection with what the handshake got to (version, cipher, the
refused certificate, the local certificate, the failure reason), as it does on a
tcp_proxy chain (test_tls_failed_handshake_details_envoy_parity.py).
One bootstrap, run by `envoy` and by `remora proxy`. Needs the envoy binary; no root."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy import tls_half_close as th
from tests.unit.proxy.proxy_helpers import FILE_LOG, addr, free_port, static_cluster

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LOG = ("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% "
       "%DOWNSTREAM_PEER_FINGERPRINT_256% %DOWNSTREAM_PEER_URI_SAN% "
       "%DOWNSTREAM_LOCAL_URI_SAN% %RESPONSE_CODE% %DOWNSTREAM_TRANSPORT_FAILURE_REASON%\n")


def _bootstrap(port: int, admin: int, backend: int, certs: Path, logs: Path) -> dict[str, Any]:
    def log(name: str) -> list[dict[str, Any]]:
        return [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(logs / f"{name}.log"),
            "log_format": {"text_format_source": {"inline_string": LOG}}}}]
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}],
        "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}}
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "in", "access_log": log("hcm"),
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}}
    return {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [{"name": "in", "address": addr("127.0.0.1", port),
                       "access_log": log("listener"), "filter_chains": [{
                           "filters": [hcm], "transport_socket": {
                               "name": "envoy.transport_sockets.tls", "typed_config": {
                                   "@type": th.PREFIX + "DownstreamTlsContext",
                                   "require_client_certificate": True,
                                   "common_tls_context": common}}}]}],
        "clusters": [static_cluster("backend", backend)]}}


def _client(port: int, cert: Path | None) -> tuple[int, str]:
    """A TLS client (with CERT's certificate) sending nothing: its port, how it ended."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert / "cert-chain.pem", cert / "key.pem")
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        local = sock.getsockname()[1]
        try:
            with ctx.wrap_socket(sock) as tls:
                tls.settimeout(0.5)
                tls.recv(10)
        except TimeoutError:
            return local, "established"
        except ssl.SSLError as exc:
            return local, f"alert {exc.reason}"
    return local, "closed"


def _story(kind: str, certs: dict[str, Path], tmp: Path) -> dict[str, Any]:
    logs = tmp / kind
    logs.mkdir()
    port, admin = free_port(), free_port()
    config = tmp / f"{kind}.json"
    with lp.echo_backend() as echo:
        config.write_text(json.dumps(_bootstrap(port, admin, echo, certs["server"], logs)))
        with lp.loopback_proxy(kind, config, port, admin):
            skip = len(lp.wait_lines(logs / "listener.log", 1))  # the start probe
            clients = {"no-certificate": _client(port, None),
                       "other-ca": _client(port, certs["other"]),
                       "accepted": _client(port, certs["server"])}
            lines = lp.wait_lines(logs / "listener.log", skip + len(clients))
            time.sleep(0.3)  # the connection manager's log, if it wrote one
            hcm = (logs / "hcm.log").read_text() if (logs / "hcm.log").exists() else ""
    by_port = {int(line.split(" ", 1)[0].rsplit(":", 1)[1]): line.split(" ", 1)[1]
               for line in lines[skip:]}
    return {"hcm": hcm, **{name: (ended, by_port.get(local))
                           for name, (local, ended) in clients.items()}}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls-failed-hcm")
    CertificateAuthority(tmp / "ca").ensure_workload(tmp / "server", "demo")
    CertificateAuthority(tmp / "other-ca").ensure_workload(tmp / "other", "demo")
    return lp.each_kind(lambda kind: _story(kind, {"server": tmp / "server",
                                                   "other": tmp / "other"}, tmp))


def test_the_listener_logs_a_failed_handshake_as_on_envoy(
        outcomes: dict[str, dict[str, Any]]) -> None:
    envoy = outcomes["envoy"]
    assert envoy["hcm"] == ""
    assert envoy["no-certificate"][0] == "alert TLSV13_ALERT_CERTIFICATE_REQUIRED"
    version, cipher, fingerprint, uri, local, code, _ = envoy["no-certificate"][1].split(" ")
    assert (version, fingerprint, uri, code) == ("TLSv1.3", "-", "-", "0")
    assert cipher != "-" and local.startswith("spiffe://")
    assert envoy["other-ca"][0] == "alert TLSV1_ALERT_UNKNOWN_CA"
    assert envoy["other-ca"][1].split(" ")[2] != "-"  # the refused certificate's
    assert envoy["accepted"][0] == "established"
    assert outcomes["remora"] == envoy
