"""``tls_params.cipher_suites`` held to a real Envoy 1.40 (BoringSSL) on loopback.

- Which lists load: each list goes to `envoy --mode validate` and to remora's loader;
  both accept it or both refuse it, and a refused list names the same pieces as
  "rejected when tried individually" (Envoy's ContextImpl message). Among them Envoy's
  own default server list (ServerContextConfigImpl::DEFAULT_CIPHER_SUITES, with its
  ``[A|B]`` equal-preference groups and trailing ``:``) pasted as one string, and
  BoringSSL's refusals of operators next to groups, and IANA names (read by both).
- What a client gets: one bootstrap with a TLS tcp_proxy listener per cipher list, run by
  `envoy` and by `remora proxy`; TLS 1.2 clients offering one cipher (each member of a
  group), a whole group in the list's order, or a cipher outside the list, must see the
  same outcome from both, also where the client lists a group's members in the other
  order (BoringSSL lets the client's order decide within a group; remora reorders the
  group per connection, cipher_order.py).
Needs the envoy binary; no root."""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from remora.errors import RemoraError
from remora.proxy import process
from remora.proxy.transport import cipher_list, cipher_order
from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import addr, free_port

pytestmark = pytest.mark.envoy

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
A128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
A256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"
ENVOY_DEFAULT = cipher_list.ENVOY_SERVER_DEFAULT  # Envoy's source text, trailing ":" too


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cipher-pki")
    CertificateAuthority(tmp / "ca").ensure_workload(tmp / "srv", "demo")  # an ECDSA key
    return tmp / "srv"


def _listener(name: str, port: int, pki: Path, suites: list[str] | None) -> dict[str, Any]:
    common: dict[str, Any] = {"tls_certificates": [{
        "certificate_chain": {"filename": str(pki / "cert-chain.pem")},
        "private_key": {"filename": str(pki / "key.pem")}}]}
    if suites is not None:
        common["tls_params"] = {"cipher_suites": suites}
    return {"name": name, "address": addr("127.0.0.1", port), "filter_chains": [{
        "transport_socket": {"name": "envoy.transport_sockets.tls",
                             "typed_config": {"@type": TLS, "common_tls_context": common}},
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY, "stat_prefix": name, "cluster": "up"}}]}]}


def _bootstrap(listeners: list[dict[str, Any]], upstream: int) -> dict[str, Any]:
    return {"static_resources": {"listeners": listeners, "clusters": [{
        "name": "up", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": addr("127.0.0.1", upstream)}}]}]}}]}}


# -- which lists load -------------------------------------------------------------------
LOADS: dict[str, list[str]] = {
    "envoy-default-one-string": [ENVOY_DEFAULT],
    "envoy-default-split": [f"[{A128}|{CHACHA}]", "[ECDHE-RSA-AES128-GCM-SHA256|"
                            "ECDHE-RSA-CHACHA20-POLY1305]", A256, "ECDHE-RSA-AES256-GCM-SHA384"],
    "custom-group": [f"[{CHACHA}|{A256}]", A128],
    "group-of-one-and-alias": [f"[{A128}]", f"[ECDHE+AESGCM|{CHACHA}]"],
    "operator-before-groups": ["-ALL", f"[{A128}|{CHACHA}]"],
    "with-tls13-name": [A128, "TLS_AES_128_GCM_SHA256"],
    "aliases": ["ALL:@STRENGTH"],
    "unknown": ["NOT-A-CIPHER"],
    "unknown-in-group": [f"[{A128}|BOGUS1]", "BOGUS2"],
    "openssl-only-cipher": ["DHE-RSA-AES128-GCM-SHA256", A128],
    "openssl-only-alias": ["HIGH:!aNULL"],
    "tls13-name-alone": ["TLS_AES_128_GCM_SHA256"],
    "operator-on-group": [f"+[{A128}|{CHACHA}]"],
    "operator-after-group": [f"[{A128}|{CHACHA}]", f"-{CHACHA}"],
    "operator-in-group": [f"[-{A128}|{CHACHA}]"],
    "unclosed-group": [f"[{A128}|{CHACHA}"],
    "bar-outside-group": [f"{A128}|{CHACHA}"],
    "spaces-in-group": [f"[{A128} | {CHACHA}]"],
    "comma-separated": [f"{A128},{CHACHA}"],
    # IANA names, which BoringSSL reads too: every one of BoringSSL's ciphers (libssl's
    # table gives them), then one BoringSSL does not have
    "iana-names": [":".join(sorted(
        std for std, name in cipher_order.standard_names().items()
        if name in cipher_list.BORINGSSL_CIPHERS))],
    "iana-group": ["[TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256|"
                   "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]"],
    "iana-openssl-only": ["TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"],
}
_REJECTED = re.compile(r"Failed to initialize cipher suites (.*)\. The following ciphers were "
                       r"rejected when tried individually: (.*)$", re.M)


@pytest.mark.parametrize("case", sorted(LOADS))
def test_loads_where_envoy_loads(case: str, pki: Path, tmp_path: Path) -> None:
    bootstrap = _bootstrap([_listener("l", 10000, pki, LOADS[case])], 10001)
    path = tmp_path / "bootstrap.json"
    envoy_ok, said = lp.envoy_validates(bootstrap, path)
    remora_said = None
    try:
        process.load(str(path), 1)
    except RemoraError as e:
        remora_said = str(e)
    assert envoy_ok == (remora_said is None), (said, remora_said)
    if not envoy_ok:
        assert remora_said is not None
        envoy_m, remora_m = _REJECTED.search(said), _REJECTED.search(remora_said)
        assert envoy_m is not None and remora_m is not None, (said, remora_said)
        # the joined list and the pieces rejected alone
        assert remora_m.groups() == envoy_m.groups(), (said, remora_said)
        assert "cipher_suites" in remora_said  # the field is named


# -- what a client gets -------------------------------------------------------------------
SERVES: dict[str, list[str] | None] = {
    "default": None,
    "envoy-default-pasted": [ENVOY_DEFAULT],
    "custom-group": [f"[{CHACHA}|{A256}]", A128],
    "iana-custom-group": ["[TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256|"
                          "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]",
                          "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
}
# client: the TLS 1.2 ciphers it offers, in its order of preference
OFFERS: dict[str, list[str]] = {
    "aes128": [A128], "chacha": [CHACHA], "aes256": [A256],
    "aes128-chacha": [A128, CHACHA], "chacha-aes128": [CHACHA, A128],
    "chacha-aes256": [CHACHA, A256], "aes256-chacha": [A256, CHACHA],
    "aes256-aes128": [A256, A128],
    "outside": ["ECDHE-ECDSA-AES128-SHA"],
}


def _handshake(port: int, offer: list[str]) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(offer))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            cipher = tls.cipher()
            return cipher[0] if cipher else "?"
    except ssl.SSLError as e:
        # both refuse the handshake with a handshake_failure alert: the client reads
        # "sslv3 alert handshake failure" (SSLV3_ALERT_HANDSHAKE_FAILURE), not an EOF
        return f"failed: {e.reason}"
    except OSError as e:
        return f"failed: {e}"


def _hold(conn: socket.socket) -> None:
    """The upstream: keeps tcp_proxy's connection open until the proxy closes it."""
    while conn.recv(65536):
        pass


@pytest.fixture(scope="module")
def negotiated(pki: Path, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[dict[str, dict[tuple[str, str], str]]]:
    tmp = tmp_path_factory.mktemp("cipher-serve")
    upstream = lp.thread_server(_hold, threaded=True)
    try:
        found: dict[str, dict[tuple[str, str], str]] = {}
        for kind in ph.KINDS:
            ports = {name: free_port() for name in SERVES}
            path = tmp / f"{kind}.json"
            path.write_text(json.dumps(_bootstrap(
                [_listener(name, ports[name], pki, SERVES[name]) for name in SERVES],
                upstream.getsockname()[1])))
            with lp.loopback_proxy(kind, path, *ports.values()):
                found[kind] = {(name, client): _handshake(ports[name], offer)
                               for name in SERVES for client, offer in OFFERS.items()}
        yield found
    finally:
        upstream.close()


@pytest.mark.parametrize("listener", sorted(SERVES))
def test_negotiated_cipher_same_as_envoy(
        negotiated: dict[str, dict[tuple[str, str], str]], listener: str) -> None:
    for client in OFFERS:
        key = (listener, client)
        assert negotiated["remora"][key] == negotiated["envoy"][key], key


def test_envoys_outcomes_are_what_the_cases_mean(
        negotiated: dict[str, dict[tuple[str, str], str]]) -> None:
    envoy = negotiated["envoy"]
    for listener in SERVES:  # one cipher offered, and the list has it: that one
        assert envoy[(listener, "aes128")] == A128
        assert envoy[(listener, "outside")] == "failed: SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert envoy[("default", "chacha")] == CHACHA
    assert envoy[("default", "aes128-chacha")] == A128
    # the client's order decides within the default's group, the server's across groups
    assert envoy[("default", "chacha-aes256")] == CHACHA
    # within a group the client's order decides: the second member written, when the
    # client lists it first
    assert envoy[("default", "chacha-aes128")] == CHACHA
    assert envoy[("envoy-default-pasted", "chacha-aes128")] == CHACHA
    assert envoy[("custom-group", "aes256-chacha")] == A256
    assert envoy[("custom-group", "aes128-chacha")] == CHACHA  # the group before A128
    for client in OFFERS:  # IANA names: the same list
        assert envoy[("iana-custom-group", client)] == envoy[("custom-group", client)]
    assert envoy[("custom-group", "aes256")] == A256
    assert envoy[("custom-group", "aes256-aes128")] == A256  # the group before A128
