"""RBAC's ``authenticated`` principal without Envoy: the matcher (rbac_engine.py) as
AuthenticatedMatcher::matches reads (source/extensions/filters/common/rbac/matchers.cc),
and the peer facts a downstream TLS handshake leaves (transport/tls.py): the subject in
RFC 2253 form, "" without a peer certificate. test_rbac_subject_envoy_parity.py holds the
same against the real Envoy."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane.ca import CertificateAuthority
from remora.proxy.config.strict import Fields
from remora.proxy.interfaces import ConnectionFacts
from remora.proxy.rbac_engine import RbacInput, parse_rules
from remora.proxy.transport import tls
from remora.proxy.transport.cert_details import subject_rfc2253
from tests.unit.proxy.xfcc_certs import rich_client

URI = "spiffe://cluster.local/ns/a/sa/one"
DNS = "one.example"
SUBJECT = 'CN=caf\\C3\\A9,O=Acme\\, Inc\\+Co+OU=\\#ops\\ ,C=FR'
TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def _peer(uri: tuple[str, ...] = (), dns: tuple[str, ...] = (), subject: str = "",
          tls_on: bool = True) -> RbacInput:
    return RbacInput("10.0.0.1", "10.0.0.1", "10.0.0.2", 80, uri, dns, subject, tls_on)


def _allows(principal: dict[str, Any], r: RbacInput) -> bool:
    rules = parse_rules(Fields({"action": "ALLOW", "policies": {"p": {
        "permissions": [{"any": True}], "principals": [principal]}}}, "rules"))
    assert rules is not None
    return rules.evaluate(r).allowed


def _name(match: dict[str, Any]) -> dict[str, Any]:
    return {"authenticated": {"principal_name": match}}


PEERS = {
    "subject-only": _peer(subject=SUBJECT),
    "all-three": _peer((URI, "spiffe://x"), ("x.example", DNS), SUBJECT),
    "uri-only": _peer((URI,)),
    "tls-no-cert": _peer(),
    "plain": _peer(tls_on=False),
}
# (principal name matcher, the peers it allows)
CASES: list[tuple[str, set[str]]] = [
    (SUBJECT, {"subject-only", "all-three"}),  # the subject after SANs that do not match
    ("C=FR,OU=#ops ,O=Acme, Inc+Co,CN=caf\u00e9", set()),  # forward order, unescaped
    (DNS, {"all-three"}),  # the second DNS SAN, though there are URI SANs
    (URI, {"all-three", "uri-only"}),
    ("", {"uri-only", "tls-no-cert"}),  # an empty subject, or none
]


@pytest.mark.parametrize(("want", "peers"), CASES)
@pytest.mark.parametrize("form", ["exact", "regex"])
def test_principal_name_tries_uri_then_dns_then_subject(want: str, peers: set[str],
                                                        form: str) -> None:
    # the exact form takes the engine's shortcut, the regex one the general matcher
    match = {"exact": want} if form == "exact" else {"safe_regex": {"regex": re.escape(want)}}
    got = {name for name, r in PEERS.items() if _allows(_name(match), r)}
    assert got == peers


def test_authenticated_without_a_name_is_any_tls_connection() -> None:
    got = {name for name, r in PEERS.items() if _allows({"authenticated": {}}, r)}
    assert got == {"subject-only", "all-three", "uri-only", "tls-no-cert"}
    prefix = _name({"prefix": "CN=caf"})
    assert {name for name, r in PEERS.items() if _allows(prefix, r)} == {
        "subject-only", "all-three"}


# -- what a handshake leaves in ConnectionFacts ----------------------------------------------
def _transport(certs: Path, root: Path, server: bool,
               with_cert: bool = True) -> tls.TlsTransport:
    common: dict[str, Any] = {"validation_context": {"trusted_ca": {"filename": str(root)}}}
    if with_cert:
        common["tls_certificates"] = [{
            "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
            "private_key": {"filename": str(certs / "key.pem")}}]
    typed: dict[str, Any] = {"common_tls_context": common}
    if server:
        typed["@type"] = TYPE + "DownstreamTlsContext"
        typed["require_client_certificate"] = False
    else:
        typed["@type"] = TYPE + "UpstreamTlsContext"
    t = tls.parse_transport_socket(Fields({"name": tls.TLS_NAME, "typed_config": typed},
                                          "transport_socket"), server=server)
    assert t is not None
    return t


async def _facts_after_handshake(server_t: tls.TlsTransport,
                                 client_t: tls.TlsTransport) -> ConnectionFacts:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()
    facts = ConnectionFacts("127.0.0.1", 0, "127.0.0.1", 0, "127.0.0.1")

    async def serve() -> None:
        conn, _ = await loop.sock_accept(lsock)
        _r, w, peer, _alpn = await tls.accept_downstream(conn, server_t, 1 << 16)
        tls.apply_peer(facts, peer)
        w.close()

    async def connect() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, lsock.getsockname())
        tr, _peer, _alpn = await tls.connect_upstream(sock, client_t, asyncio.Protocol)
        tr.close()

    try:
        await asyncio.wait_for(asyncio.gather(serve(), connect()), 10)
    finally:
        lsock.close()
    return facts


def test_handshake_gives_the_rfc2253_subject(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    ca.ensure_workload(tmp_path / "server", "demo-to")
    client = rich_client(ca, tmp_path / "nosan", sans=False)
    root = tmp_path / "server" / "root-cert.pem"
    server_t = _transport(tmp_path / "server", root, server=True)
    facts = asyncio.run(_facts_after_handshake(server_t, _transport(client, root,
                                                                    server=False)))
    assert facts.tls_established and facts.tls_peer is not None
    assert facts.peer_uri_sans == facts.peer_dns_sans == ()
    assert facts.peer_subject == subject_rfc2253(facts.tls_peer.der)
    # last RDN first, escaped (test_xfcc.py holds subject_rfc2253 to the openssl command)
    assert facts.peer_subject.startswith("1.3.6.1.4.1.99999.1=#")
    assert "O=Acme\\, Inc\\+Co+OU=\\#ops\\ " in facts.peer_subject
    assert facts.peer_subject.endswith(",C=FR")
    # a TLS peer without a certificate: still TLS, subject ""
    anon = asyncio.run(_facts_after_handshake(
        server_t, _transport(tmp_path / "server", root, server=False, with_cert=False)))
    assert anon.tls_established and anon.tls_peer is None and anon.peer_subject == ""
