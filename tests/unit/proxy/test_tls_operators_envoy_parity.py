"""The access log's TLS operators beyond the Istio set (IP, email and otherName SANs, the
peer's chain, every UPSTREAM_* TLS operator) and the SAN matchers of both validation
contexts (match_typed_subject_alt_names with IP_ADDRESS, EMAIL, OTHER_NAME, DNS, URI),
held to a real Envoy 1.40 on loopback.

Certificates carry SANs of every kind (xfcc_certs.every_kind_of_san: IPv4, IPv6 and an
IPv4-mapped IPv6 address, two emails, a UPN and an INTEGER otherName). One bootstrap runs
once by `envoy` and once by `remora proxy`: an HTTP and a tcp_proxy listener with mutual
TLS (the proxy's own such certificate) forward over mutual TLS (the same certificate as
client) to a TLS backend that requires a client certificate, by TLS 1.3 and by TLS 1.2;
a plain-text HTTP listener forwards to it and to a plain backend; one cluster per
upstream SAN matcher case, one listener per downstream SAN matcher case. The access log
lines (text and json_format) must be the same but for the TLS session ids (random per
connection: their shape is checked, and which lines share one: a cluster's next
connection resumes its session, so the tcp12 line repeats the tls12 request's id),
and each SAN matcher case must accept or refuse the handshake as Envoy does, with
Envoy's failure reason upstream. An UpstreamTlsContext without tls_params speaks TLS 1.2
at most in both.
Needs the envoy binary; no root."""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from remora.controlplane.ca import CertificateAuthority
from remora.errors import RemoraError
from remora.proxy import process
from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port
from tests.unit.proxy.xfcc_certs import NUMBER_OID, UPN_OID, every_kind_of_san

pytestmark = pytest.mark.envoy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
DOWN_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UP_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

# every TLS operator Envoy 1.40 accepts that the Istio set (test_access_log_tls_envoy_parity)
# leaves out
OPERATORS = (
    "DOWNSTREAM_PEER_IP_SAN", "DOWNSTREAM_PEER_EMAIL_SAN", "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN", "DOWNSTREAM_LOCAL_EMAIL_SAN", "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256", "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "UPSTREAM_PEER_URI_SAN", "UPSTREAM_PEER_DNS_SAN", "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_PEER_SUBJECT", "UPSTREAM_PEER_ISSUER", "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_CERT_V_START", "UPSTREAM_PEER_CERT_V_END", "UPSTREAM_PEER_CERT_V_END(%s)",
    "UPSTREAM_LOCAL_URI_SAN", "UPSTREAM_LOCAL_DNS_SAN", "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_TLS_VERSION", "UPSTREAM_TLS_CIPHER", "UPSTREAM_TLS_SESSION_ID",
)
# what Envoy 1.40 refuses ("Not supported field in StreamInfo: ..."), so remora must too
NOT_IN_ENVOY = (
    "UPSTREAM_PEER_EMAIL_SAN", "UPSTREAM_PEER_OTHERNAME_SAN", "UPSTREAM_LOCAL_EMAIL_SAN",
    "UPSTREAM_LOCAL_OTHERNAME_SAN", "UPSTREAM_LOCAL_SUBJECT", "UPSTREAM_PEER_FINGERPRINT_256",
    "UPSTREAM_PEER_SERIAL", "UPSTREAM_PEER_CHAIN_SERIALS", "DOWNSTREAM_LOCAL_ISSUER",
    "DOWNSTREAM_LOCAL_CHAIN_SERIALS", "DOWNSTREAM_LOCAL_CERT",
)
SESSION = OPERATORS.index("UPSTREAM_TLS_SESSION_ID")
SEP = " | "
HEAD = ("PROTOCOL", "RESPONSE_CODE", "UPSTREAM_CLUSTER", "UPSTREAM_TRANSPORT_FAILURE_REASON")
TEXT = SEP.join(f"%{op}%" for op in (*HEAD, *OPERATORS)) + "\n"
JSON = {f"k{i:02d}": f"%{op}%" for i, op in enumerate(OPERATORS)}

# IP SANs: the backend's and the client's differ from the proxy's, so each operator shows
# whose certificate it read
IPS = {"backend": ("127.0.0.1", "2001:db8::a:1", "::ffff:10.1.2.3"),
       "client": ("127.0.0.2", "2001:db8::c:1", "::ffff:10.1.2.3"),
       "proxy": ("127.0.0.3", "::1")}


def _string(kind: str, value: str) -> dict[str, Any]:
    return {kind: value}


# SAN matcher cases: name -> (matchers, whether the backend's / client's certificate
# passes). <NAME> in a matcher is the certificate's name (backend upstream, client
# downstream).
SAN_CASES: dict[str, tuple[list[dict[str, Any]], bool]] = {
    "ip4": ([{"san_type": "IP_ADDRESS", "matcher": _string("exact", "<IP4>")}], True),
    "ip6": ([{"san_type": "IP_ADDRESS", "matcher": _string("exact", "<IP6>")}], True),
    # the address in ``ssl``'s getpeercert form: no SAN is written that way
    "ip6-long": ([{"san_type": "IP_ADDRESS", "matcher": _string("exact", "<IP6LONG>")}], False),
    "ip6-prefix": ([{"san_type": "IP_ADDRESS", "matcher": _string("prefix", "2001:db8:")}],
                   True),
    "ip4-mapped": ([{"san_type": "IP_ADDRESS",
                     "matcher": _string("exact", "::ffff:10.1.2.3")}], True),
    "ip-miss": ([{"san_type": "IP_ADDRESS", "matcher": _string("exact", "10.9.9.9")}], False),
    "ip-as-uri": ([{"san_type": "URI", "matcher": _string("exact", "<IP4>")}], False),
    "email": ([{"san_type": "EMAIL", "matcher": _string("exact", "second@<NAME>.example")}],
              True),
    "email-suffix": ([{"san_type": "EMAIL", "matcher": _string("suffix", "@<NAME>.example")}],
                     True),
    "email-miss": ([{"san_type": "EMAIL", "matcher": _string("exact", "ops@x.example")}],
                   False),
    "email-as-dns": ([{"san_type": "DNS", "matcher": _string("exact", "ops@<NAME>.example")}],
                     False),
    "upn": ([{"san_type": "OTHER_NAME", "oid": UPN_OID,
              "matcher": _string("exact", "<NAME>@corp.example")}], True),
    "number": ([{"san_type": "OTHER_NAME", "oid": NUMBER_OID,
                 "matcher": _string("exact", "1234")}], True),
    "upn-other-oid": ([{"san_type": "OTHER_NAME", "oid": NUMBER_OID,
                        "matcher": _string("exact", "<NAME>@corp.example")}], False),
    # an exact DNS matcher follows DNS rules: the "*." SAN covers one label, any case
    "dns-wildcard": ([{"san_type": "DNS", "matcher": _string("exact", "api.<NAME>.example")}],
                     True),
    "dns-case": ([{"san_type": "DNS", "matcher": _string("exact", "<NAME>.EXAMPLE")}], True),
    "dns-two-labels": ([{"san_type": "DNS", "matcher": _string("exact", "a.b.<NAME>.example")}],
                       False),
    "dns-prefix": ([{"san_type": "DNS", "matcher": _string("prefix", "api.")}], False),
    "second-matcher": ([{"san_type": "EMAIL", "matcher": _string("exact", "no@x.example")},
                        {"san_type": "IP_ADDRESS", "matcher": _string("exact", "<IP6>")}], True),
}


def _matchers(case: str, name: str) -> list[dict[str, Any]]:
    ips = IPS[name]
    subst = {"<IP4>": ips[0], "<IP6>": ips[1],
             "<IP6LONG>": ":".join(f"{int(g, 16):X}"
                                 for g in ipaddress.IPv6Address(ips[1]).exploded.split(":")),
             "<NAME>": name}
    text = json.dumps(SAN_CASES[case][0])
    for key in subst:
        text = text.replace(key, subst[key])
    matchers: list[dict[str, Any]] = json.loads(text)
    return matchers


def _file_log(path: Path, log_format: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_LOG, "path": str(path), "log_format": log_format}}


def _logs(logs: Path, name: str) -> list[dict[str, Any]]:
    return [_file_log(logs / f"{name}.log", {"text_format_source": {"inline_string": TEXT}}),
            _file_log(logs / f"{name}.json", {"json_format": JSON})]


def _common(certs: dict[str, Path], sans: list[dict[str, Any]] | None = None,
            top: str | None = None) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {
        "filename": str(certs["proxy"] / "root-cert.pem")}}
    if sans is not None:
        validation["match_typed_subject_alt_names"] = sans
    common: dict[str, Any] = {
        "tls_certificates": [{
            "certificate_chain": {"filename": str(certs["proxy"] / "cert-chain.pem")},
            "private_key": {"filename": str(certs["proxy"] / "key.pem")}}],
        "validation_context": validation}
    if top is not None:
        common["tls_params"] = {"tls_maximum_protocol_version": top}
    return common


def _down_tls(certs: dict[str, Path], sans: list[dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWN_TLS, "require_client_certificate": True,
        "common_tls_context": _common(certs, sans)}}


def _hcm(name: str, logs: Path, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name, "access_log": _logs(logs, name),
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}}


def _route(prefix: str, cluster: str) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


def _listener(name: str, port: int, flt: dict[str, Any],
              tls: dict[str, Any] | None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [flt]}
    if tls is not None:
        chain["transport_socket"] = tls
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [chain]}


def _cluster(name: str, port: int, tls: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}]}]}}
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                       "typed_config": {"@type": UP_TLS, **tls}}
    return cluster


# listeners: name -> what the clients do there
MAIN = ("http", "tcp13", "tcp12", "plain")


def _bootstrap(ports: dict[str, int], admin: int, backend: int, echo: int,
               certs: dict[str, Path], logs: Path) -> dict[str, Any]:
    up13 = {"sni": "backend.example", "common_tls_context": _common(certs, top="TLSv1_3")}
    up12 = {"sni": "backend.example", "common_tls_context": _common(certs, top="TLSv1_2")}
    # TLS_AUTO is TLS 1.2 at most for a client: a minimum of TLS 1.3 alone leaves none
    min13 = {"common_tls_context": {**_common(certs), "tls_params": {
        "tls_minimum_protocol_version": "TLSv1_3"}}}
    clusters = [_cluster("tls13", backend, up13), _cluster("tls12", backend, up12),
                _cluster("plain", echo, None), _cluster("min13", backend, min13)]
    routes = [_route("/tls12", "tls12"), _route("/plain", "plain"), _route("/min13", "min13")]
    for case in SAN_CASES:
        clusters.append(_cluster(f"usan-{case}", backend, {
            "common_tls_context": _common(certs, _matchers(case, "backend"))}))
        routes.append(_route(f"/usan-{case}/", f"usan-{case}"))
    routes.append(_route("/", "tls13"))
    listeners = [
        _listener("http", ports["http"], _hcm("http", logs, routes), _down_tls(certs)),
        _listener("plain", ports["plain"], _hcm("plain", logs, routes), None),
        *(_listener(name, ports[name], {
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster,
                "access_log": _logs(logs, name)}}, _down_tls(certs))
          for name, cluster in (("tcp13", "tls13"), ("tcp12", "tls12"))),
    ]
    for case in SAN_CASES:
        name = f"dsan-{case}"
        listeners.append(_listener(name, ports[name], _hcm(name, logs, [_route("/", "plain")]),
                                   _down_tls(certs, _matchers(case, "client"))))
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def _backend(certs: dict[str, Path], refusals: list[str]) -> socket.socket:
    """A TLS HTTP/1.1 backend with the backend certificate that requires a client
    certificate of the test's root and answers each request head with 200 "ok"; how each
    handshake that failed ended joins REFUSALS (the alert the proxy sent, as ``ssl``
    names it, or the error)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["backend"] / "cert-chain.pem", certs["backend"] / "key.pem")
    ctx.load_verify_locations(certs["backend"] / "root-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED

    def handle(conn: socket.socket) -> None:
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except ssl.SSLError as e:
            refusals.append(str(e.reason))
            return
        except OSError as e:
            refusals.append(type(e).__name__)
            return
        with tls:
            for head in lp.request_heads(tls):
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                if b"\r\nConnection: close" in head:
                    # the tcp_proxy sessions end by the backend's close: remora cannot
                    # half-close a TLS connection (asyncio's SSL transports have no
                    # write_eof), where Envoy sends close_notify when the client closes
                    return

    return lp.thread_server(handle, threaded=True)


def _client_context(certs: dict[str, Path], top: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
                    ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.maximum_version = top
    ctx.load_verify_locations(certs["client"] / "root-cert.pem")
    ctx.load_cert_chain(certs["client"] / "cert-chain.pem", certs["client"] / "key.pem")
    return ctx


def _read_response(sock: socket.socket | ssl.SSLSocket, buf: bytes = b"") -> tuple[int, bytes]:
    """The status of one HTTP/1.1 response with a Content-Length from SOCK, and what was
    read beyond it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(head.split(b" ", 2)[1]), rest[length:]


def _get(port: int, ctx: ssl.SSLContext | None, paths: list[str]) -> list[int]:
    """PATHS requested one after the other on one connection: the statuses."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = ctx.wrap_socket(raw) if ctx is not None else raw
    statuses = []
    try:
        left = b""
        for i, path in enumerate(paths):
            close = "Connection: close\r\n" if i == len(paths) - 1 else ""
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n{close}\r\n".encode())
            status, left = _read_response(sock, left)
            statuses.append(status)
    finally:
        sock.close()
    return statuses


def _handshake_outcome(port: int, ctx: ssl.SSLContext) -> str:
    """"ok" when a request through the listener was answered, else "refused" (the server
    refused the client's certificate: the handshake fails or, in TLS 1.3, where the
    client's certificate is checked after the client's Finished, the first read)."""
    try:
        return "ok" if _get(port, ctx, ["/"]) == [200] else "other"
    except (OSError, ssl.SSLError, AssertionError):
        return "refused"


def _refusal(port: int, certs: dict[str, Path], client: str | None) -> str:
    """What a TLS 1.2 client with CLIENT's certificate (None: none) reads when the
    listener refuses it: the alert the server sent, as ``ssl`` names it, or how the
    connection ended without one. TLS 1.2 only: there the server refuses the certificate
    before the client's handshake ends, so the alert is read by the handshake; in TLS 1.3
    the client has sent its request by then and Envoy, which sends the alert too (seen by
    openssl s_client), often resets the connection with the request unread before the
    client reads it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        ctx.load_cert_chain(certs[client] / "cert-chain.pem", certs[client] / "key.pem")
    try:
        _get(port, ctx, ["/"])
    except ssl.SSLError as e:
        return f"alert {e.reason}" if e.reason and "ALERT" in e.reason else type(e).__name__
    except OSError as e:
        return type(e).__name__
    except AssertionError:
        return "EOF"
    return "accepted"


Lines = dict[str, list[str]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tls-ops-certs")
    ca = CertificateAuthority(tmp / "ca")
    found = {name: every_kind_of_san(ca, tmp / name, name, ips) for name, ips in IPS.items()}
    # a client certificate of another root with the same name: its signature fails
    found["stranger"] = every_kind_of_san(CertificateAuthority(tmp / "other-ca"),
                                          tmp / "stranger", "client", IPS["client"])
    return found


@pytest.fixture(scope="module")
def outcomes(certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, tuple[Lines, dict[str, str]]]]:
    tmp = tmp_path_factory.mktemp("tls-ops")
    refusals: list[str] = []
    backend = _backend(certs, refusals)
    try:
        with lp.echo_backend() as echo:
            found: dict[str, tuple[Lines, dict[str, str]]] = {}
            for kind in ph.KINDS:
                logs = tmp / kind
                logs.mkdir()
                ports = {name: free_port() for name in MAIN}
                ports.update({f"dsan-{case}": free_port() for case in SAN_CASES})
                cfg = tmp / f"{kind}.json"
                cfg.write_text(json.dumps(_bootstrap(ports, free_port(),
                                                     backend.getsockname()[1], echo, certs,
                                                     logs)))
                handshakes: dict[str, str] = {}
                seen = len(refusals)
                with lp.loopback_proxy(kind, cfg, ports["plain"]):
                    ctx13 = _client_context(certs)
                    # two requests on one connection: the second goes out on the pooled
                    # upstream connection
                    assert _get(ports["http"], ctx13, ["/", "/", "/tls12", "/plain"]) == \
                        [200] * 4
                    assert _get(ports["http"], _client_context(certs, ssl.TLSVersion.TLSv1_2),
                                ["/"]) == [200]
                    assert _get(ports["http"], ctx13, ["/min13"]) == [503]
                    lp.wait_lines(logs / "http.log", 6)
                    statuses = []
                    for case in SAN_CASES:  # one connection each: one upstream handshake
                        statuses += _get(ports["http"], ctx13, [f"/usan-{case}/"])
                    assert statuses == [200 if ok else 503 for _, ok in SAN_CASES.values()], \
                        (kind, statuses)
                    assert _get(ports["plain"], None, ["/", "/plain"]) == [200, 200]
                    for name in ("tcp13", "tcp12"):
                        raw = socket.create_connection(("127.0.0.1", ports[name]), timeout=5)
                        with ctx13.wrap_socket(raw) as sock:
                            sock.sendall(b"GET /tcp HTTP/1.1\r\nHost: a\r\n"
                                         b"Connection: close\r\n\r\n")
                            assert _read_response(sock)[0] == 200
                        lp.wait_lines(logs / f"{name}.log", 1)
                    for case in SAN_CASES:
                        handshakes[case] = _handshake_outcome(ports[f"dsan-{case}"], ctx13)
                    for client in (None, "stranger"):  # refused: which alert says so
                        handshakes[f"refused-{client}"] = _refusal(ports["http"], certs,
                                                                   client)
                    handshakes["refused-san"] = _refusal(ports["dsan-email-miss"], certs,
                                                         "client")
                    counts = {"http": 6 + len(SAN_CASES), "plain": 2, "tcp13": 1, "tcp12": 1}
                    got: Lines = {}
                    for name, count in counts.items():
                        for suffix in ("log", "json"):
                            got[f"{name}.{suffix}"] = lp.wait_lines(logs / f"{name}.{suffix}",
                                                                    count)
                            assert len(got[f"{name}.{suffix}"]) == count, (kind, name, got)
                # what the backend read from the proxy refusing its certificate
                handshakes["upstream-refusals"] = ",".join(sorted(refusals[seen:]))
                found[kind] = (got, handshakes)
            yield found
    finally:
        backend.close()


SESSION_ID = re.compile(r"[0-9a-f]{64}")


def _masked(name: str, line: str, labels: dict[str, str]) -> Any:
    """LINE with its upstream session id replaced by a label, the same for the same id
    (LABELS: one kind's ids so far, by first appearance): ids are random per session, and
    the labels keep which connections resumed which session."""
    def label(sid: str) -> str:
        assert SESSION_ID.fullmatch(sid), sid
        return labels.setdefault(sid, f"SID{len(labels)}")
    if name.endswith(".json"):
        doc = json.loads(line)
        key = f"k{SESSION:02d}"
        if doc[key] is not None:
            doc[key] = label(doc[key])
        return doc
    fields = line.split(SEP)
    at = len(HEAD) + SESSION
    if fields[at] != "-":
        fields[at] = label(fields[at])
    return fields


def test_every_line_same_as_envoy(outcomes: dict[str, tuple[Lines, dict[str, str]]]) -> None:
    """Line for line; a cluster's next connection resumes its TLS 1.2 session (Envoy's
    client session cache, max_session_keys 1): the same session id as the one before."""
    envoy, remora = outcomes["envoy"][0], outcomes["remora"][0]
    assert envoy.keys() == remora.keys()
    differ = {}
    e_labels: dict[str, str] = {}
    r_labels: dict[str, str] = {}
    for name in sorted(envoy):
        for i, (e, r) in enumerate(zip(envoy[name], remora[name], strict=True)):
            if _masked(name, e, e_labels) != _masked(name, r, r_labels):
                differ[f"{name}:{i}"] = {"envoy": e, "remora": r}
    assert not differ, json.dumps(differ, indent=1)
    # the tls12 cluster's request and the tcp12 session: one session, resumed
    tls12 = envoy["http.log"][2].split(SEP)[len(HEAD) + SESSION]
    assert envoy["tcp12.log"][0].split(SEP)[len(HEAD) + SESSION] == tls12 != "-"


def test_downstream_san_matchers_accept_and_refuse_as_envoy(
        outcomes: dict[str, tuple[Lines, dict[str, str]]]) -> None:
    envoy, remora = outcomes["envoy"][1], outcomes["remora"][1]
    cases = {c: "ok" if SAN_CASES[c][1] else "refused" for c in SAN_CASES}
    assert {c: envoy[c] for c in cases} == cases
    assert {c: remora[c] for c in cases} == cases


def test_refused_client_certificates_get_envoys_alert(
        outcomes: dict[str, tuple[Lines, dict[str, str]]]) -> None:
    """A handshake refused for the client's certificate ends with the alert OpenSSL
    wrote, sent before the close as Envoy sends BoringSSL's (no certificate:
    handshake_failure; a certificate whose signature fails: decrypt_error; one no SAN
    matcher accepts: certificate_unknown, the SAN matchers running in the handshake),
    not with a bare close (uvloop drops the alert; handshake.alerting sends it) or, for
    the SANs, a completed handshake and a close (transport/handshake.py)."""
    envoy, remora = outcomes["envoy"][1], outcomes["remora"][1]
    refused = [k for k in envoy if k.startswith("refused-")]
    assert {k: envoy[k] for k in refused} == {
        "refused-None": "alert SSLV3_ALERT_HANDSHAKE_FAILURE",
        "refused-stranger": "alert TLSV1_ALERT_DECRYPT_ERROR",
        "refused-san": "alert SSLV3_ALERT_CERTIFICATE_UNKNOWN"}
    assert {k: remora[k] for k in refused} == {k: envoy[k] for k in refused}


def test_upstream_san_refusals_send_envoys_alert(
        outcomes: dict[str, tuple[Lines, dict[str, str]]]) -> None:
    """The proxy as client refuses the backend's certificate in the handshake (the SAN
    matcher clusters, TLS 1.2): the backend reads certificate_unknown, as from Envoy."""
    envoy = outcomes["envoy"][1]["upstream-refusals"]
    refused = sum(not ok for _, ok in SAN_CASES.values())
    assert envoy.count("SSLV3_ALERT_CERTIFICATE_UNKNOWN") == refused, envoy
    assert outcomes["remora"][1]["upstream-refusals"] == envoy


def _der(directory: Path) -> bytes:
    return x509.load_pem_x509_certificate(
        (directory / "cert-chain.pem").read_bytes()).public_bytes(serialization.Encoding.DER)


def test_envoys_values_are_what_the_cases_mean(
        outcomes: dict[str, tuple[Lines, dict[str, str]]], certs: dict[str, Path]) -> None:
    """Envoy's own lines, so that the comparison is not between two empty results."""
    lines = outcomes["envoy"][0]
    f = dict(zip([*HEAD, *OPERATORS], lines["http.log"][0].split(SEP), strict=True))
    assert f["DOWNSTREAM_PEER_IP_SAN"] == ",".join(IPS["client"])
    assert f["DOWNSTREAM_LOCAL_IP_SAN"] == ",".join(IPS["proxy"])
    assert f["UPSTREAM_PEER_IP_SAN"] == ",".join(IPS["backend"])
    assert f["UPSTREAM_LOCAL_IP_SAN"] == ",".join(IPS["proxy"])
    assert f["DOWNSTREAM_PEER_EMAIL_SAN"] == "ops@client.example,second@client.example"
    assert f["DOWNSTREAM_PEER_OTHERNAME_SAN"] == "client@corp.example,1234"
    chain = [_der(certs["client"]), x509.load_pem_x509_certificate(
        (certs["client"] / "root-cert.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER)]
    assert f["DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256"] == ",".join(
        hashlib.sha256(der).hexdigest() for der in chain)
    assert f["UPSTREAM_PEER_URI_SAN"] == "spiffe://cluster.local/ns/backend/sa/backend"
    assert f["UPSTREAM_PEER_SUBJECT"] == "CN=backend,O=remora test"
    assert f["UPSTREAM_TLS_VERSION"] == "TLSv1.3"
    tls12 = dict(zip([*HEAD, *OPERATORS], lines["http.log"][2].split(SEP), strict=True))
    assert tls12["UPSTREAM_CLUSTER"] == "tls12" and tls12["UPSTREAM_TLS_VERSION"] == "TLSv1.2"
    plain = dict(zip([*HEAD, *OPERATORS], lines["http.log"][3].split(SEP), strict=True))
    assert plain["UPSTREAM_CLUSTER"] == "plain" and plain["UPSTREAM_TLS_VERSION"] == "-"
    assert plain["DOWNSTREAM_PEER_IP_SAN"] == ",".join(IPS["client"])
    min13 = dict(zip([*HEAD, *OPERATORS], lines["http.log"][5].split(SEP), strict=True))
    assert min13["RESPONSE_CODE"] == "503" and "NO_SUPPORTED_VERSIONS_ENABLED" in \
        min13["UPSTREAM_TRANSPORT_FAILURE_REASON"] and min13["UPSTREAM_TLS_VERSION"] == "-"
    # the SAN matcher clusters have no tls_params: TLS 1.2, the client's default maximum
    usan = [dict(zip([*HEAD, *OPERATORS], line.split(SEP), strict=True))
            for line in lines["http.log"][6:]]
    assert [u["RESPONSE_CODE"] for u in usan] == \
        ["200" if ok else "503" for _, ok in SAN_CASES.values()]
    assert {u["UPSTREAM_TLS_VERSION"] for u in usan if u["RESPONSE_CODE"] == "200"} == \
        {"TLSv1.2"}
    refused = usan[list(SAN_CASES).index("ip6-long")]
    assert "verify_cert_failed:_SAN_matcher" in refused["UPSTREAM_TRANSPORT_FAILURE_REASON"]


@pytest.mark.parametrize("operator", NOT_IN_ENVOY)
def test_operators_envoy_refuses_are_refused_with_its_words(operator: str,
                                                            tmp_path: Path) -> None:
    bootstrap = {"static_resources": {"listeners": [_listener("l", 10000, {
        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY, "stat_prefix": "l", "cluster": "c", "access_log": [_file_log(
                tmp_path / "l.log", {"text_format_source": {"inline_string":
                                                            f"%{operator}%\n"}})]}},
        None)], "clusters": [_cluster("c", 10001, None)]}}
    path = tmp_path / "bootstrap.json"
    envoy_ok, said = lp.envoy_validates(bootstrap, path)
    words = f"Not supported field in StreamInfo: {operator}"
    assert not envoy_ok and words in said, said
    with pytest.raises(RemoraError) as err:
        process.load(str(path), 1)
    assert words in str(err.value)
    # and every operator of OPERATORS loads in both
    ok = copy.deepcopy(bootstrap)
    tcp = ok["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    tcp["typed_config"]["access_log"][0]["typed_config"]["log_format"] = {
        "text_format_source": {"inline_string": TEXT}}
    envoy_ok, said = lp.envoy_validates(ok, path)
    assert envoy_ok, said
    process.load(str(path), 1)


SAN_REFUSALS = {
    "no-san-type": ({"matcher": {"exact": "a"}}, "SanType: value must not be in list "
                    "[SAN_TYPE_UNSPECIFIED]", "value must not be in list [SAN_TYPE_UNSPECIFIED]"),
    "other-name-without-oid": ({"san_type": "OTHER_NAME", "matcher": {"exact": "a"}},
                               "Failed to create SAN matcher for OTHER_NAME with OID: ", None),
    "other-name-bad-oid": ({"san_type": "OTHER_NAME", "oid": "upn", "matcher": {"exact": "a"}},
                           "Failed to create SAN matcher for OTHER_NAME with OID: upn", None),
    "oid-on-ip": ({"san_type": "IP_ADDRESS", "oid": "1.2.3", "matcher": {"exact": "a"}},
                  None, None),
}


@pytest.mark.parametrize("case", sorted(SAN_REFUSALS))
def test_san_matcher_config_refused_where_envoy_refuses(case: str, certs: dict[str, Path],
                                                        tmp_path: Path) -> None:
    matcher, envoy_words, remora_words = SAN_REFUSALS[case]
    for where in ("cluster", "listener"):
        if where == "cluster":
            resources: dict[str, Any] = {"clusters": [_cluster("c", 10001, {
                "common_tls_context": _common(certs, [matcher])})]}
        else:
            resources = {"clusters": [_cluster("c", 10001, None)], "listeners": [_listener(
                "l", 10000, {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": TCP_PROXY, "stat_prefix": "l", "cluster": "c"}},
                _down_tls(certs, [matcher]))]}
        path = tmp_path / f"{where}.json"
        envoy_ok, said = lp.envoy_validates({"static_resources": resources}, path)
        assert envoy_ok == (envoy_words is None), said
        if envoy_words is not None:
            assert envoy_words in said, said
        try:
            process.load(str(path), 1)
            remora_said = None
        except RemoraError as e:
            remora_said = f"{e} {e.fix}"
        assert (remora_said is None) == envoy_ok, remora_said
        if remora_said is not None:
            assert (remora_words or envoy_words or "") in remora_said, remora_said
