"""RBAC's ``authenticated.principal_name`` held to a real Envoy 1.40 on loopback.

Envoy's AuthenticatedMatcher (source/extensions/filters/common/rbac/matchers.cc) tries
the peer certificate's URI SANs, then its DNS SANs, then ``subjectPeerCertificate()``:
the subject as BoringSSL's X509_NAME_print_ex(XN_FLAG_RFC2253) prints it (last RDN first,
RFC 2253 escaping), "" without a peer certificate; with no ``principal_name`` it matches
any TLS connection. One bootstrap has, per principal below, an HTTP RBAC listener
(``envoy.filters.http.rbac`` before the router) and a network RBAC listener
(``envoy.filters.network.rbac`` before tcp_proxy), each over TLS that asks for a client
certificate without requiring one, plus one plain-text listener; it runs once by `envoy`
and once by `remora proxy`. The same requests go through every listener with a client
certificate WITHOUT SANs whose subject RFC 2253 escapes (",", "+", '"', a leading "#", a
trailing space, a multi-valued RDN, non-ASCII, an OID BoringSSL has no name for), the same
subject with URI and DNS SANs, an Istio-like certificate (one URI SAN, empty subject) and
no certificate; both proxies must allow and deny the same ones. Needs the envoy binary;
no root."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from remora.controlplane.ca import CertificateAuthority
from remora.proxy.transport.cert_details import subject_rfc2253
from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port
from tests.unit.proxy.xfcc_certs import RICH_DNS, RICH_URIS, rich_client

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
CLIENTS = ("nosan", "rich", "istio", None)


def _leaf(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / "cert-chain.pem").read_bytes())


def _forward(cert: x509.Certificate) -> str:
    """The subject first RDN first, unescaped: what remora matched before (getpeercert's
    order), which Envoy never matches."""
    return ",".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in cert.subject)


def principals(certs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """name: the principal of an ALLOW policy."""
    cert = _leaf(certs["nosan"])
    rfc2253 = subject_rfc2253(cert.public_bytes(serialization.Encoding.DER))
    return {
        "rfc2253": {"authenticated": {"principal_name": {"exact": rfc2253}}},
        "forward": {"authenticated": {"principal_name": {"exact": _forward(cert)}}},
        # the subject's first printed entry is its last RDN: an OID dumped as hex
        "prefix": {"authenticated": {"principal_name": {"prefix": "1.3.6.1.4.1.99999.1=#"}}},
        "escaped-cn": {"authenticated": {"principal_name": {
            "safe_regex": {"regex": r'.*,CN=caf\\C3\\A9 \\"q\\" \\<x\\>\\;\\\\,.*'}}}},
        "second-dns": {"authenticated": {"principal_name": {"exact": RICH_DNS[1]}}},
        "second-uri": {"authenticated": {"principal_name": {"exact": RICH_URIS[1]}}},
        "empty": {"authenticated": {"principal_name": {"exact": ""}}},
        "any-tls": {"authenticated": {}},
    }


def _rules(principal: dict[str, Any]) -> dict[str, Any]:
    return {"action": "ALLOW", "policies": {"p": {"permissions": [{"any": True}],
                                                  "principals": [principal]}}}


def _transport(certs: Path) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TLS, "require_client_certificate": False,
        "common_tls_context": {
            "tls_certificates": [{
                "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
                "private_key": {"filename": str(certs / "key.pem")}}],
            "validation_context": {"trusted_ca": {
                "filename": str(certs / "root-cert.pem")}}}}}


def _listener(name: str, port: int, principal: dict[str, Any], layer: str,
              server: Path | None) -> dict[str, Any]:
    if layer == "http":
        filters = [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
            "http_filters": [
                {"name": "envoy.filters.http.rbac",
                 "typed_config": {"@type": HTTP_RBAC, "rules": _rules(principal)}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]
    else:
        filters = [
            {"name": "envoy.filters.network.rbac", "typed_config": {
                "@type": NET_RBAC, "stat_prefix": name + ".", "rules": _rules(principal)}},
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": name, "cluster": "echo"}}]
    chain: dict[str, Any] = {"filters": filters}
    if server is not None:
        chain["transport_socket"] = _transport(server)
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [chain]}


def _bootstrap(listeners: list[dict[str, Any]], admin: int, echo: int) -> dict[str, Any]:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": listeners,
                "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "echo", "endpoints": [
                                  {"lb_endpoints": [{"endpoint": {"address": {
                                      "socket_address": {"address": "127.0.0.1",
                                                         "port_value": echo}}}}]}]}}]}}


def _client_context(root: Path, client: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(root)
    if client is not None:
        ctx.load_cert_chain(client / "cert-chain.pem", client / "key.pem")
    return ctx


def _request(port: int, ctx: ssl.SSLContext | None) -> str:
    """One request; what came back: the status line, or "closed" (nothing, or a reset:
    the network filter's denial). Read up to the status line only: tcp_proxy need not
    close its side when the backend closes (Envoy's half-close)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    out = b""
    try:
        sock = ctx.wrap_socket(raw) if ctx is not None else raw
        sock.sendall(b"GET /rbac HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        while b"\r\n" not in out and (chunk := sock.recv(65536)):
            out += chunk
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    finally:
        raw.close()
    return out.split(b"\r\n", 1)[0].decode() if out else "closed"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rbac-certs")
    ca = CertificateAuthority(tmp / "ca")
    ca.ensure_workload(tmp / "server", "demo-to")
    ca.ensure_workload(tmp / "istio", "demo-from")
    return {"server": tmp / "server", "istio": tmp / "istio",
            "rich": rich_client(ca, tmp / "rich"),
            "nosan": rich_client(ca, tmp / "nosan", sans=False)}


@pytest.fixture(scope="module")
def outcomes(certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[tuple[str, str, str], str]]]:
    tmp = tmp_path_factory.mktemp("rbac")
    root = certs["server"] / "root-cert.pem"
    kinds = principals(certs)
    with lp.echo_backend() as echo:
        found: dict[str, dict[tuple[str, str, str], str]] = {}
        for kind in ph.KINDS:
            ports: dict[tuple[str, str], int] = {}
            listeners = []
            for name, principal in kinds.items():
                for layer in ("http", "network"):
                    ports[(name, layer)] = port = free_port()
                    listeners.append(_listener(f"{layer}-{name}", port, principal, layer,
                                               certs["server"]))
            for layer in ("http", "network"):  # the same principal without TLS
                ports[("plain-any-tls", layer)] = port = free_port()
                listeners.append(_listener(f"{layer}-plain", port, kinds["any-tls"], layer,
                                           None))
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(listeners, free_port(), echo)))
            got: dict[tuple[str, str, str], str] = {}
            with lp.loopback_proxy(kind, cfg, ports[("rfc2253", "http")]):
                for (name, layer), port in ports.items():
                    if name.startswith("plain"):
                        got[(name, layer, "plain")] = _request(port, None)
                        continue
                    for client in CLIENTS:
                        ctx = _client_context(root, certs[client] if client else None)
                        got[(name, layer, str(client))] = _request(port, ctx)
            found[kind] = got
        yield found


def test_every_decision_same_as_envoy(
        outcomes: dict[str, dict[tuple[str, str, str], str]]) -> None:
    envoy, remora = outcomes["envoy"], outcomes["remora"]
    assert envoy.keys() == remora.keys()
    differ = {case: (remora[case], envoy[case]) for case in envoy if remora[case] != envoy[case]}
    assert not differ, json.dumps({"/".join(k): v for k, v in differ.items()}, indent=1)


def test_envoys_decisions_are_what_the_cases_mean(
        outcomes: dict[str, dict[tuple[str, str, str], str]]) -> None:
    """The comparison above is not between two sets of failures: Envoy's own answers."""
    envoy = outcomes["envoy"]
    ok, forbidden = "HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden"
    for layer, deny in (("http", forbidden), ("network", "closed")):
        def allowed(name: str, layer: str = layer, deny: str = deny) -> set[str]:
            out = {client for (n, lay, client), v in envoy.items() if n == name and lay == layer
                   and v == ok}
            assert all(v in (ok, deny) for (n, lay, _), v in envoy.items()
                       if n == name and lay == layer)
            return out
        # the RFC 2253 subject, also tried after SANs that do not match
        assert allowed("rfc2253") == {"nosan", "rich"}
        assert allowed("forward") == set()
        assert allowed("prefix") == {"nosan", "rich"}
        assert allowed("escaped-cn") == {"nosan", "rich"}
        # every DNS SAN is tried after the URI SANs, not only when there is no URI SAN
        assert allowed("second-dns") == {"rich"}
        assert allowed("second-uri") == {"rich"}
        # "" is the subject of Istio's certificate, and of a TLS peer without one
        assert allowed("empty") == {"istio", "None"}
        assert allowed("any-tls") == {"nosan", "rich", "istio", "None"}
        assert envoy[("plain-any-tls", layer, "plain")] == deny
