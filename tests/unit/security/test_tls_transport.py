"""envoy.transport_sockets.tls in remora: context parsing, mTLS on loopback, SNI/ALPN,
SAN checks, expired certificates, reload after rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import uvloop

from remora.controlplane import ca
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.transport import tls

SERVER_ID = "spiffe://cluster.local/ns/demo-to/sa/default"
CLIENT_ID = "spiffe://cluster.local/ns/demo-from/sa/default"
TYPE = "type.googleapis.com/"


def sds_file(path: Path, certs: Path) -> None:
    path.write_text(json.dumps({"resources": [
        {"@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret", "name": "default",
         "tls_certificate": {"certificate_chain": {"filename": str(certs / ca.CERT_CHAIN)},
                             "private_key": {"filename": str(certs / ca.KEY)}}},
        {"@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret", "name": "ROOTCA",
         "validation_context": {"trusted_ca": {"filename": str(certs / ca.ROOT_CERT)}}}]}))


def sds(name: str, path: Path) -> dict[str, Any]:
    return {"name": name, "sds_config": {"path_config_source": {"path": str(path)},
                                         "resource_api_version": "V3"}}


def context(sds_path: Path, san: str | None, alpn: list[str]) -> dict[str, Any]:
    default: dict[str, Any] = {}
    if san:
        default["match_typed_subject_alt_names"] = [{"san_type": "URI",
                                                     "matcher": {"exact": san}}]
    return {"tls_certificate_sds_secret_configs": [sds("default", sds_path)],
            "combined_validation_context": {
                "default_validation_context": default,
                "validation_context_sds_secret_config": sds("ROOTCA", sds_path)},
            "alpn_protocols": alpn}


def downstream(sds_path: Path, require: bool = True) -> tls.TlsTransport:
    raw = {"name": tls.TLS_NAME, "typed_config": {
        "@type": TYPE + tls.DOWNSTREAM, "require_client_certificate": require,
        "common_tls_context": context(sds_path, None, ["istio-http/1.1", "http/1.1"])}}
    t = tls.parse_transport_socket(Fields(raw, "transport_socket"), server=True)
    assert t is not None
    return t


def upstream(sds_path: Path, san: str) -> tls.TlsTransport:
    raw = {"name": tls.TLS_NAME, "typed_config": {
        "@type": TYPE + tls.UPSTREAM, "sni": "outbound_.18080_._.svc.demo-to.svc.cluster.local",
        "common_tls_context": context(sds_path, san, ["istio-http/1.1", "istio"])}}
    t = tls.parse_transport_socket(Fields(raw, "transport_socket"), server=False)
    assert t is not None
    return t


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    authority = ca.CertificateAuthority(tmp_path / "ca")
    out: dict[str, Any] = {"ca": authority}
    for side, ns in (("server", "demo-to"), ("client", "demo-from")):
        certs = tmp_path / side
        authority.ensure_workload(certs, ns)
        sds_file(tmp_path / f"{side}-sds.json", certs)
        out[side] = certs
        out[f"{side}_sds"] = tmp_path / f"{side}-sds.json"
    return out


async def handshake(server_t: tls.TlsTransport, client_t: tls.TlsTransport
                    ) -> tuple[Any, Any]:
    """(server result or TlsError, client result or TlsError) of one loopback handshake."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def serve() -> Any:
        conn, _ = await loop.sock_accept(lsock)
        try:
            _r, w, peer, alpn = await tls.accept_downstream(conn, server_t, 1 << 16)
        except tls.TlsError as exc:
            conn.close()
            return exc
        w.write(b"hi")
        await w.drain()
        w.close()
        return peer, alpn

    async def connect() -> Any:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, lsock.getsockname())
        try:
            tr, peer, alpn = await tls.connect_upstream(sock, client_t, asyncio.Protocol)
        except tls.TlsError as exc:
            return exc
        tr.close()
        return peer, alpn

    try:
        return tuple(await asyncio.wait_for(asyncio.gather(serve(), connect()), 10))  # type: ignore[return-value]
    finally:
        lsock.close()


def test_mutual_tls_identities_sni_alpn(pki: dict[str, Any]) -> None:
    server_t = downstream(pki["server_sds"])
    client_t = upstream(pki["client_sds"], SERVER_ID)
    (speer, salpn), (cpeer, calpn) = asyncio.run(handshake(server_t, client_t))
    assert speer.validated and speer.uri_sans == (CLIENT_ID,)
    assert cpeer.uri_sans == (SERVER_ID,)
    assert salpn == calpn == "istio-http/1.1"


def test_wrong_server_identity_is_refused_with_envoys_reason(pki: dict[str, Any]) -> None:
    client_t = upstream(pki["client_sds"], "spiffe://cluster.local/ns/demo-to/sa/other")
    _, cres = asyncio.run(handshake(downstream(pki["server_sds"]), client_t))
    assert isinstance(cres, tls.TlsError)
    assert cres.stat == "fail_verify_san"
    assert cres.reason.startswith("TLS_error:|268435581:SSL routines:OPENSSL_internal:"
                                  "CERTIFICATE_VERIFY_FAILED")


def test_expired_server_certificate_is_refused(pki: dict[str, Any]) -> None:
    authority: ca.CertificateAuthority = pki["ca"]
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    authority.write_workload(pki["server"], authority.issue("demo-to", now=old))
    _, cres = asyncio.run(handshake(downstream(pki["server_sds"]),
                                    upstream(pki["client_sds"], SERVER_ID)))
    assert isinstance(cres, tls.TlsError)
    assert "certificate has expired" in cres.reason


def test_client_without_certificate_refused_when_required(pki: dict[str, Any],
                                                          tmp_path: Path) -> None:
    raw = {"name": tls.TLS_NAME, "typed_config": {
        "@type": TYPE + tls.UPSTREAM, "common_tls_context": {}}}
    anon = tls.parse_transport_socket(Fields(raw, "ts"), server=False)
    assert anon is not None
    sres, _ = asyncio.run(handshake(downstream(pki["server_sds"]), anon))
    assert isinstance(sres, tls.TlsError)
    # not required (PERMISSIVE-style optional client cert): accepted, unauthenticated
    sres, _ = asyncio.run(handshake(downstream(pki["server_sds"], require=False), anon))
    assert not isinstance(sres, tls.TlsError)
    assert not sres[0].validated


def test_rotation_is_picked_up_by_the_next_handshake(pki: dict[str, Any]) -> None:
    server_t = downstream(pki["server_sds"])
    client_t = upstream(pki["client_sds"], SERVER_ID)
    first = server_t.context()
    assert server_t.context() is first  # unchanged files: same context
    authority: ca.CertificateAuthority = pki["ca"]
    authority.write_workload(pki["server"], authority.issue("demo-to"))
    assert server_t.context() is not first
    (_speer, _), (cpeer, _) = asyncio.run(handshake(server_t, client_t))
    assert cpeer.uri_sans == (SERVER_ID,)


def test_bad_contexts_are_config_errors(pki: dict[str, Any]) -> None:
    bad = {"name": tls.TLS_NAME, "typed_config": {
        "@type": TYPE + tls.DOWNSTREAM, "common_tls_context": {"alpn_protocols": ["h2"],
                                                               "tls_certificatez": []}}}
    with pytest.raises(ConfigError, match="tls_certificatez"):
        tls.parse_transport_socket(Fields(bad, "ts"), server=True)
    wrong_side = {"name": tls.TLS_NAME, "typed_config": {"@type": TYPE + tls.UPSTREAM,
                                                         "common_tls_context": {}}}
    with pytest.raises(ConfigError, match=r"UpstreamTlsContext.*on a filter chain"):
        tls.parse_transport_socket(Fields(wrong_side, "ts"), server=True)
    raw_buffer = {"name": "envoy.transport_sockets.raw_buffer"}
    assert tls.parse_transport_socket(Fields(raw_buffer, "ts"), server=True) is None


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_san_refusal_is_the_handshakes_with_an_alert(pki: dict[str, Any], loop: str) -> None:
    """The client's SAN matcher refuses the server's certificate inside the handshake
    (transport/handshake.py's verify callback), so the server's handshake fails on the
    certificate_unknown alert the client sends, as Envoy's does, instead of completing."""
    client_t = upstream(pki["client_sds"], "spiffe://cluster.local/ns/demo-to/sa/other")
    run = uvloop.run if loop == "uvloop" else asyncio.run
    sres, cres = run(handshake(downstream(pki["server_sds"]), client_t))
    assert isinstance(cres, tls.TlsError) and cres.stat == "fail_verify_san"
    assert "SAN matcher, certificate SANs are [spiffe://cluster.local/ns/demo-to/sa/default]" \
        in cres.reason
    assert isinstance(sres, tls.TlsError), sres
    assert "ALERT_CERTIFICATE_UNKNOWN" in sres.reason


@pytest.mark.parametrize("keys", [None, 0])
def test_client_resumes_its_last_session(pki: dict[str, Any], keys: int | None) -> None:
    """An UpstreamTlsContext's next handshake resumes the last one's session (Envoy's
    client session cache, max_session_keys 1 by default; 0 turns it off), TLS 1.3 too
    (its ticket arrives after the handshake, read by the time of the next connection)."""
    raw = {"name": tls.TLS_NAME, "typed_config": {
        "@type": TYPE + tls.UPSTREAM, "common_tls_context": context(
            pki["client_sds"], SERVER_ID, [])}}
    if keys is not None:
        raw["typed_config"]["max_session_keys"] = keys
    client_t = tls.parse_transport_socket(Fields(raw, "ts"), server=False)
    assert client_t is not None
    server_t = downstream(pki["server_sds"])

    async def twice() -> list[bool]:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        loop = asyncio.get_running_loop()
        reused = []
        try:
            for _ in range(2):
                async def serve() -> None:
                    conn, _ = await loop.sock_accept(lsock)
                    _r, w, _p, _a = await tls.accept_downstream(conn, server_t, 1 << 16)
                    w.write(b"hi")
                    await w.drain()
                    await asyncio.sleep(0.05)
                    w.close()

                async def connect() -> bool:
                    sock = socket.socket()
                    sock.setblocking(False)
                    await loop.sock_connect(sock, lsock.getsockname())
                    reader = asyncio.StreamReader()
                    tr, _peer, _alpn = await tls.connect_upstream(
                        sock, client_t, lambda: asyncio.StreamReaderProtocol(reader))
                    assert await reader.readexactly(2) == b"hi"  # the ticket came first
                    was = bool(tr.get_extra_info("ssl_object").session_reused)
                    tr.close()
                    return was
                _, was = await asyncio.gather(serve(), connect())
                reused.append(was)
        finally:
            lsock.close()
        return reused

    assert uvloop.run(twice()) == [False, keys is None]
