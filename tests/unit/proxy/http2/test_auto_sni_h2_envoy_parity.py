"""``auto_sni`` and ``override_auto_sni_header`` over an HTTP/2 upstream (TLS, ALPN h2)
held to a real Envoy 1.40 on loopback: one bootstrap (an HTTP/1.1 listener, one TLS h2
cluster with HttpProtocolOptions.upstream_http_protocol_options), run by `envoy` and by
`remora proxy`, each in front of its own fresh h2 backend, the same requests in the same
order. The backend answers each stream with the server name its connection's ClientHello
carried (x-sni) and the connection's number (x-conn), so both the SNI and which pooled
connection carried each request are compared: Envoy keys its upstream connection pools
by the SNI (the transport socket options' hash), so requests with the same name share an
HTTP/2 connection, a different name opens another; the port is dropped from the host
(and the name lower-cased), an IP host sends no SNI, the override header's value wins
when it is not empty. The requests come from HTTP/1.1 clients (Host), then as the
streams of one h2c client (:authority), which finds the same pooled connections.
Needs the envoy binary (marker `envoy`); no root, loopback only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2 import upstream_setup as us
from tests.unit.proxy.http2.h2client import H2Client
from tests.unit.proxy.proxy_helpers import addr, free_port

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# (Host, x-sni header or None): in this order, on fresh downstream connections
REQUESTS: list[tuple[str, str | None]] = [
    ("a.example", None),
    ("b.example", None),
    ("a.example", None),  # the first connection again
    ("a.example:8443", None),  # the port is not part of the name
    ("127.0.0.1:80", None),  # an IP: no SNI, a pool of its own
    ("127.0.0.1", None),
    ("A.Example", None),  # lower-cased: a.example's connection (both proxies)
    ("b.example", "c.example"),  # the override header wins
    ("c.example", "a.example"),  # ... and shares a.example's connection
    ("b.example", ""),  # empty: the host's name
]


def _bootstrap(port: int, admin: int, backend: int) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "in",
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "tls-h2"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    options = us.h2_options()
    options[HPO]["upstream_http_protocol_options"] = {
        "auto_sni": True, "override_auto_sni_header": "x-sni"}
    cluster = us.cluster(
        "tls-h2", backend, typed_extension_protocol_options=options,
        transport_socket={"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": us.UPSTREAM_TLS,
            "common_tls_context": {"alpn_protocols": ["h2"]}}})
    return {"admin": {"address": addr("127.0.0.1", admin)},
            "static_resources": {
                "listeners": [{"name": "in", "address": addr("127.0.0.1", port),
                               "filter_chains": [{"filters": [{
                                   "name": "envoy.filters.network.http_connection_manager",
                                   "typed_config": hcm}]}]}],
                "clusters": [cluster]}}


def _seen(port: int) -> list[tuple[int, str, str, str, str]]:
    """Each request's (status, SNI, connection number, ALPN, path) at the backend."""
    out = []
    for i, (host, override) in enumerate(REQUESTS):
        headers = {"Host": host}
        if override is not None:
            headers["x-sni"] = override
        status, got, _ = us.request(port, "GET", f"/size/{i}", headers=headers)
        out.append((status, got.get("x-sni", "?"), got.get("x-conn", "?"),
                    got.get("x-alpn", "?"), f"/size/{i}"))
    return out


async def _seen_h2(port: int) -> list[tuple[int, str, str, str, str]]:
    """The same requests as streams of one h2c downstream connection (:authority), after
    the HTTP/1.1 ones: the pools those opened are reused."""
    c = await H2Client.connect(("127.0.0.1", port))
    out = []
    try:
        for i, (host, override) in enumerate(REQUESTS):
            extra = [("x-sni", override)] if override is not None else []
            r = await c.request("GET", f"/size/{i}", authority=host, headers=extra)
            got = dict(r.headers)
            out.append((r.status, got.get("x-sni", "?"), got.get("x-conn", "?"),
                        got.get("x-alpn", "?"), f"/size/{i}"))
    finally:
        await c.close()
    return out


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("auto-sni-h2")
    tls = us.server_certificate(tmp)
    found: dict[str, Any] = {}
    for kind in ph.KINDS:
        port, admin, backend = free_port(), free_port(), free_port()
        cfg = tmp / f"{kind}.json"
        cfg.write_text(json.dumps(_bootstrap(port, admin, backend)))
        with us.backend(backend, tls=tls), lp.loopback_proxy(kind, cfg, port):
            found[kind] = _seen(port)
            found[kind + "-h2"] = asyncio.run(_seen_h2(port))
            stats = lp.admin_text(admin, "/stats")
            found[kind + "-cx"] = [line for line in stats.splitlines()
                                   if line.startswith("cluster.tls-h2.upstream_cx_total:")]
    yield found


def test_sni_and_pooled_connections_as_envoy(seen: dict[str, Any]) -> None:
    assert seen["remora"] == seen["envoy"], seen
    assert seen["remora-h2"] == seen["envoy-h2"], seen
    assert seen["remora-cx"] == seen["envoy-cx"], seen


def test_envoys_outcomes_are_what_the_cases_mean(seen: dict[str, Any]) -> None:
    envoy = seen["envoy"]
    assert all(status == 200 and alpn == "h2" for status, _, _, alpn, _ in envoy), envoy
    sni = [e[1] for e in envoy]
    conn = [e[2] for e in envoy]
    assert sni == ["a.example", "b.example", "a.example", "a.example", "-", "-",
                   "a.example", "c.example", "a.example", "b.example"]
    # one connection per name (and one for no name), reused for the same name
    assert conn[0] == conn[2] == conn[3] == conn[6] == conn[8]
    assert conn[1] == conn[9] and conn[4] == conn[5]
    assert len({conn[0], conn[1], conn[4], conn[7]}) == 4
    # an h2c client's :authority the same way, on the connections already open
    assert [e[1:3] for e in seen["envoy-h2"]] == [e[1:3] for e in envoy]
    assert seen["envoy-cx"] == ["cluster.tls-h2.upstream_cx_total: 4"]
