"""x-forwarded-client-cert held to a real Envoy 1.40 on loopback: one bootstrap with a
listener per forward_client_cert_details mode (mutual TLS, set_current_client_cert_details
on), one plain-text listener and one TLS listener that does not require a client
certificate, run once by `envoy` and once by `remora proxy`. The same requests (without
the header, with one, with two lines of it) go through each listener over TLS with two
client certificates (an Istio-like one: empty subject, one URI SAN; and one with a subject
full of characters RFC 2253 escapes, two URI and two DNS SANs, sent with its root), and
without one; the echo backend returns the request head it got, and the
x-forwarded-client-cert lines must be the same, byte for byte (Hash, Cert and Chain
included: the certificates are the same). HTTP/2 downstreams (ALPN h2) go through the
same hook: one listener is asked over HTTP/2 as well. Needs the envoy binary; no root."""

from __future__ import annotations

import hashlib
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
from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, h2_tls_request
from tests.unit.proxy.xfcc_certs import rich_client

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ALL = {"cert": True, "chain": True, "subject": True, "uri": True, "dns": True}
ISTIO = {"subject": True, "dns": True, "uri": True}  # what istiod sets on inbound
# listener name: (forward_client_cert_details, set_current_client_cert_details, transport)
LISTENERS: dict[str, tuple[str, dict[str, bool], str]] = {
    "append-all": ("APPEND_FORWARD", ALL, "mtls"),
    "append-istio": ("APPEND_FORWARD", ISTIO, "mtls"),
    "append-none": ("APPEND_FORWARD", {}, "mtls"),
    "set": ("SANITIZE_SET", {"uri": True, "subject": True, "dns": True}, "mtls"),
    "forward-only": ("FORWARD_ONLY", ALL, "mtls"),
    "sanitize": ("SANITIZE", ALL, "mtls"),
    "always": ("ALWAYS_FORWARD_ONLY", ALL, "mtls"),
    "append-plain": ("APPEND_FORWARD", ISTIO, "plain"),
    "always-plain": ("ALWAYS_FORWARD_ONLY", {}, "plain"),
    "append-optional": ("APPEND_FORWARD", ISTIO, "tls-optional"),
}
REQUESTS = {
    "none": b"",
    "one": b"x-forwarded-client-cert: By=spiffe://up;Hash=ab;URI=spiffe://first\r\n",
    "two": b"X-Forwarded-Client-Cert: By=spiffe://a\r\nx-other: 1\r\n"
           b"x-forwarded-client-cert: By=spiffe://b\r\n",
}


def _listener(name: str, port: int, server_certs: Path) -> dict[str, Any]:
    mode, details, transport = LISTENERS[name]
    hcm: dict[str, Any] = {
        "@type": HCM, "stat_prefix": name, "forward_client_cert_details": mode,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}
    if details:
        hcm["set_current_client_cert_details"] = details
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": hcm}]}
    if transport != "plain":
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS, "require_client_certificate": transport == "mtls",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": str(server_certs / "cert-chain.pem")},
                    "private_key": {"filename": str(server_certs / "key.pem")}}],
                "validation_context": {"trusted_ca": {
                    "filename": str(server_certs / "root-cert.pem")}}}}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [chain]}


def _bootstrap(ports: dict[str, int], admin: int, echo: int, certs: Path) -> dict[str, Any]:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": [_listener(name, port, certs) for name, port in ports.items()],
                "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "echo", "endpoints": [
                                  {"lb_endpoints": [{"endpoint": {"address": {
                                      "socket_address": {"address": "127.0.0.1",
                                                         "port_value": echo}}}}]}]}}]}}


def _client_context(root: Path, client: Path | None, alpn: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(root)
    if client is not None:
        ctx.load_cert_chain(client / "cert-chain.pem", client / "key.pem")
    ctx.set_alpn_protocols([alpn])
    return ctx


def _xfcc_lines(head: bytes) -> list[str]:
    return [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-forwarded-client-cert:")]


def _http1(port: int, ctx: ssl.SSLContext | None, extra: bytes) -> list[str]:
    """One request with EXTRA header lines; the XFCC lines the backend received."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = ctx.wrap_socket(raw) if ctx is not None else raw
    try:
        sock.sendall(b"GET /xfcc HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + extra
                     + b"\r\n")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    finally:
        sock.close()
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    return _xfcc_lines(out.partition(b"\r\n\r\n")[2])


def _http2(port: int, ctx: ssl.SSLContext, extra: bytes) -> list[str]:
    """The same over HTTP/2 (ALPN h2): the echoed body of one stream."""
    headers = [(":method", "GET"), (":path", "/xfcc"), (":scheme", "https"),
               (":authority", "a")]
    for line in extra.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.decode().lower(), value.strip().decode()))
    body = h2_tls_request(port, ctx, headers)
    return _xfcc_lines(body)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("xfcc-certs")
    ca = CertificateAuthority(tmp / "ca")
    ca.ensure_workload(tmp / "server", "demo-to")
    ca.ensure_workload(tmp / "istio", "demo-from")
    return {"server": tmp / "server", "istio": tmp / "istio",
            "rich": rich_client(ca, tmp / "rich")}


@pytest.fixture(scope="module")
def outcomes(certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[tuple[str, ...], list[str]]]]:
    tmp = tmp_path_factory.mktemp("xfcc")
    root = certs["server"] / "root-cert.pem"
    with lp.echo_backend() as echo:
        found: dict[str, dict[tuple[str, ...], list[str]]] = {}
        for kind in ph.KINDS:
            ports = {name: free_port() for name in LISTENERS}
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(_bootstrap(ports, free_port(), echo, certs["server"])))
            got: dict[tuple[str, ...], list[str]] = {}
            with lp.loopback_proxy(kind, cfg, ports["append-plain"]):
                for name, port in ports.items():
                    transport = LISTENERS[name][2]
                    clients: list[str | None] = [None] if transport == "plain" else (
                        ["istio", "rich"] + ([None] if transport == "tls-optional" else []))
                    for client in clients:
                        ctx = None if transport == "plain" else _client_context(
                            root, certs[client] if client else None, "http/1.1")
                        for req, extra in REQUESTS.items():
                            got[(name, str(client), req)] = _http1(port, ctx, extra)
                for req, extra in REQUESTS.items():
                    ctx = _client_context(root, certs["rich"], "h2")
                    got[("append-all", "rich", req, "h2")] = _http2(
                        ports["append-all"], ctx, extra)
            found[kind] = got
        yield found


def test_every_case_same_as_envoy(outcomes: dict[str, dict[tuple[str, ...], list[str]]]
                                  ) -> None:
    envoy, remora = outcomes["envoy"], outcomes["remora"]
    assert envoy.keys() == remora.keys()
    differ = {case: (remora[case], envoy[case]) for case in envoy if remora[case] != envoy[case]}
    assert not differ, json.dumps({"/".join(k): v for k, v in differ.items()}, indent=1)


def _der(chain: Path) -> bytes:
    return x509.load_pem_x509_certificate(chain.read_bytes()).public_bytes(
        serialization.Encoding.DER)


def test_envoys_values_are_what_the_cases_mean(
        outcomes: dict[str, dict[tuple[str, ...], list[str]]], certs: dict[str, Path]) -> None:
    """The comparison above is not between two empty results: Envoy's own values."""
    envoy = outcomes["envoy"]
    server_id = "spiffe://cluster.local/ns/demo-to/sa/default"
    istio_hash = hashlib.sha256(_der(certs["istio"] / "cert-chain.pem")).hexdigest()
    istio = (f'By={server_id};Hash={istio_hash};Subject="";'
             "URI=spiffe://cluster.local/ns/demo-from/sa/default")
    assert envoy[("append-istio", "istio", "none")] == [istio]
    assert envoy[("append-istio", "istio", "one")] == [
        f"By=spiffe://up;Hash=ab;URI=spiffe://first,{istio}"]
    assert envoy[("append-istio", "istio", "two")] == [
        f"By=spiffe://a,By=spiffe://b,{istio}"]
    assert envoy[("set", "istio", "two")] == [istio]
    assert envoy[("forward-only", "istio", "two")] == ["By=spiffe://a,By=spiffe://b"]
    assert envoy[("forward-only", "istio", "none")] == []
    for client in ("istio", "rich"):
        assert envoy[("sanitize", client, "one")] == []
        assert envoy[("always", client, "one")] == ["By=spiffe://up;Hash=ab;URI=spiffe://first"]
    assert envoy[("append-plain", "None", "one")] == []
    assert envoy[("always-plain", "None", "two")] == ["By=spiffe://a,By=spiffe://b"]
    assert envoy[("append-optional", "None", "one")] == []
    rich = envoy[("append-all", "rich", "none")][0]
    assert 'Subject="' in rich and "URI=spiffe://cluster.local/ns/rich/sa/two" in rich
    assert "DNS=one.example;DNS=two.example" in rich and 'Chain="-----BEGIN' in rich
    assert envoy[("append-all", "rich", "none", "h2")] == [rich]
