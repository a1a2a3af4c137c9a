"""The access log's downstream TLS operators without a proxy: the certificate facts
(cert_details), the per-connection TlsConnectionInfo over a real in-memory handshake, the
text and json_format renderings, config errors, and tls_params.cipher_suites. The
proxies' lines are compared in test_access_log_tls_envoy_parity.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from remora.controlplane.ca import CertificateAuthority
from remora.proxy.access_log.format import JsonFormat, TextFormat, render_text
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.stream_info import StreamInfo
from remora.proxy.transport import cipher_order, tls
from remora.proxy.transport.cert_details import (
    issuer_rfc2253,
    serial_hex,
    sha1_hex,
    validity,
)
from remora.proxy.transport.connection_info import FIELDS, TlsConnectionInfo
from tests.unit.proxy.xfcc_certs import RICH_DNS, RICH_URIS, rich_client

OPS = sorted(f"DOWNSTREAM_{name}" for name in FIELDS)


def _cert(serial: int, before: dt.datetime, after: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer, one"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(before).not_valid_after(after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


T0 = dt.datetime(2018, 12, 18, 1, 50, 34, tzinfo=dt.UTC)


@pytest.mark.parametrize(("serial", "text"), [
    (0x0A1B, "0a1b"),  # BN_bn2hex: two digits a byte, lower case
    (0x80, "80"),  # DER has a leading zero byte: not printed
    (0x1234567890ABCDEF1234, "1234567890abcdef1234"),
    (1, "01"),
])
def test_serial_is_bn2hex(serial: int, text: str) -> None:
    assert serial_hex(_cert(serial, T0, T0 + dt.timedelta(days=1))) == text


def test_validity_utc_and_generalized_time() -> None:
    # RFC 5280: UTCTime through 2049, GeneralizedTime from 2050
    after = dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    der = _cert(5, T0, after)
    assert validity(der) == (T0.timestamp(), after.timestamp())


def test_issuer_and_sha1() -> None:
    der = _cert(7, T0, T0 + dt.timedelta(days=1))
    assert issuer_rfc2253(der) == "O=Org,CN=issuer\\, one"  # last RDN first, "," escaped
    assert sha1_hex(der) == hashlib.sha1(der).hexdigest()


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext,
               ) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A real TLS handshake between two in-memory SSLObjects."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_side=False)
    done = {"s": False, "c": False}
    for _ in range(20):
        for key, obj in (("c", cli), ("s", srv)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    cli.write(b"x")  # the TLS 1.3 server's tickets reach the client, the session settles
    s_in.write(c_out.read())
    assert srv.read(1) == b"x"
    return srv, cli


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tls-log-unit")
    ca = CertificateAuthority(tmp / "ca")
    ca.ensure_workload(tmp / "server", "demo-to")
    return {"server": tmp / "server", "rich": rich_client(ca, tmp / "rich")}


def _transport(pki: dict[str, Path], extra_params: dict[str, object] | None = None,
               ) -> tls.TlsTransport:
    params: dict[str, object] = {"tls_minimum_protocol_version": "TLSv1_2"}
    params.update(extra_params or {})
    doc = {"name": tls.TLS_NAME, "typed_config": {
        "@type": f"type.googleapis.com/{tls.DOWNSTREAM}",
        "common_tls_context": {
            "tls_params": params,
            "tls_certificates": [{
                "certificate_chain": {"filename": str(pki["server"] / "cert-chain.pem")},
                "private_key": {"filename": str(pki["server"] / "key.pem")}}],
            "validation_context": {"trusted_ca": {
                "filename": str(pki["server"] / "root-cert.pem")}}}}}
    transport = tls.parse_transport_socket(Fields(doc, "ts", "TransportSocket"), server=True)
    assert transport is not None
    return transport


def _client(pki: dict[str, Path], cert: bool, top: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.maximum_version = top
    ctx.load_verify_locations(pki["server"] / "root-cert.pem")
    if cert:
        ctx.load_cert_chain(pki["rich"] / "cert-chain.pem", pki["rich"] / "key.pem")
    return ctx


def _connection(pki: dict[str, Path], cert: bool = True,
                top: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> TlsConnectionInfo:
    """What accept_downstream makes for one connection (tls.py), over a real handshake."""
    transport = _transport(pki)
    srv, _ = _handshake(transport.context(), _client(pki, cert, top))
    der = srv.getpeercert(binary_form=True)
    peer = tls.TlsPeer(der, (der,), transport.local_uri_sans) if der else None
    return TlsConnectionInfo(srv, peer, transport.local_der)


def _fields(line: str) -> dict[str, str]:
    return dict(zip(OPS, line.rstrip("\n").split(" | "), strict=True))


TEXT = " | ".join(f"%{op}%" for op in OPS) + "\n"


def test_mutual_tls_values(pki: dict[str, Path]) -> None:
    info = StreamInfo(downstream_tls=_connection(pki))
    got = _fields(TextFormat(TEXT, "f").render(info))
    rich = x509.load_pem_x509_certificate((pki["rich"] / "cert-chain.pem").read_bytes())
    der = rich.public_bytes(serialization.Encoding.DER)
    assert got["DOWNSTREAM_PEER_URI_SAN"] == ",".join(RICH_URIS)
    assert got["DOWNSTREAM_PEER_DNS_SAN"] == ",".join(RICH_DNS)
    assert got["DOWNSTREAM_LOCAL_URI_SAN"] == "spiffe://cluster.local/ns/demo-to/sa/default"
    assert got["DOWNSTREAM_LOCAL_DNS_SAN"] == "-" and got["DOWNSTREAM_LOCAL_SUBJECT"] == "-"
    assert got["DOWNSTREAM_PEER_SUBJECT"].startswith("1.3.6.1.4.1.99999.1=#")
    assert got["DOWNSTREAM_PEER_ISSUER"] == "O=cluster.local"
    assert got["DOWNSTREAM_TLS_VERSION"] == "TLSv1.3"
    assert got["DOWNSTREAM_TLS_CIPHER"] == "TLS_AES_256_GCM_SHA384"
    assert got["DOWNSTREAM_TLS_SESSION_ID"] == "-"  # TLS 1.3: none, as BoringSSL
    assert got["DOWNSTREAM_PEER_FINGERPRINT_256"] == hashlib.sha256(der).hexdigest()
    assert got["DOWNSTREAM_PEER_FINGERPRINT_1"] == hashlib.sha1(der).hexdigest()
    assert int(got["DOWNSTREAM_PEER_SERIAL"], 16) == rich.serial_number
    assert got["DOWNSTREAM_PEER_SERIAL"] == got["DOWNSTREAM_PEER_SERIAL"].lower()
    assert got["DOWNSTREAM_PEER_CERT"].startswith("-----BEGIN%20CERTIFICATE-----%0AMII")
    assert got["DOWNSTREAM_PEER_CERT"].endswith("-----END%20CERTIFICATE-----%0A")
    # the compiled renderer and the plain one agree
    parts = TextFormat(TEXT, "f").parts
    assert render_text(parts, info) == TextFormat(TEXT, "f").render(info)


def test_tls12_cipher_is_envoys_default_choice(pki: dict[str, Path]) -> None:
    """With Envoy's server list, a client offering AES256-GCM first still gets
    AES128-GCM (Envoy 1.40's choice; ``ssl``'s own list would pick AES256-GCM)."""
    info = StreamInfo(downstream_tls=_connection(pki, top=ssl.TLSVersion.TLSv1_2))
    got = _fields(TextFormat(TEXT, "f").render(info))
    assert got["DOWNSTREAM_TLS_VERSION"] == "TLSv1.2"
    assert got["DOWNSTREAM_TLS_CIPHER"] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_no_client_certificate_and_plain_text(pki: dict[str, Path]) -> None:
    got = _fields(TextFormat(TEXT, "f").render(
        StreamInfo(downstream_tls=_connection(pki, cert=False))))
    local = {"DOWNSTREAM_LOCAL_URI_SAN", "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_TLS_CIPHER"}
    assert {k for k, v in got.items() if v != "-"} == local
    plain = TextFormat(TEXT, "f").render(StreamInfo())
    assert plain == " | ".join("-" for _ in OPS) + "\n"
    doc = json.loads(JsonFormat({"a": "%DOWNSTREAM_PEER_URI_SAN%",
                                 "b": "x %DOWNSTREAM_TLS_VERSION%"}, "f").render(StreamInfo()))
    assert doc == {"a": None, "b": "x -"}


def test_values_are_cached_per_connection_and_shared_by_requests(
        pki: dict[str, Path]) -> None:
    conn_tls = _connection(pki)
    conn = StreamInfo(downstream_tls=conn_tls)
    first = StreamInfo.for_request(conn, "HTTP/1.1")
    second = StreamInfo.for_request(conn, "HTTP/1.1")
    assert first.downstream_tls is second.downstream_tls is conn_tls
    a = conn_tls.text("PEER_CERT")
    assert conn_tls.text("PEER_CERT") is a  # computed once
    assert len(vars(first)) < 30  # CPython 3.11 shares instance keys up to 30
    assert list(vars(first)) == list(vars(conn))  # the constructor's order


def test_peer_cert_validity_default_and_custom(pki: dict[str, Path]) -> None:
    rich = x509.load_pem_x509_certificate((pki["rich"] / "cert-chain.pem").read_bytes())
    info = StreamInfo(downstream_tls=_connection(pki))
    start, end = rich.not_valid_before_utc, rich.not_valid_after_utc
    fmt = ("%DOWNSTREAM_PEER_CERT_V_START%|%DOWNSTREAM_PEER_CERT_V_END%|"
           "%DOWNSTREAM_PEER_CERT_V_START(%b %e %H:%M:%S %Y %Z)%|"
           "%DOWNSTREAM_PEER_CERT_V_END(%s)%")
    assert TextFormat(fmt, "f").render(info) == "|".join([
        start.strftime("%Y-%m-%dT%H:%M:%S.000Z"), end.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        start.strftime("%b ") + f"{start.day:2d}" + start.strftime(" %H:%M:%S %Y UTC"),
        str(int(end.timestamp()))])
    no_cert = StreamInfo(downstream_tls=_connection(pki, cert=False))
    assert TextFormat(fmt, "f").render(no_cert) == "-|-|-|-"
    doc = json.loads(JsonFormat({"v": "%DOWNSTREAM_PEER_CERT_V_END%"}, "f").render(no_cert))
    assert doc == {"v": None}


@pytest.mark.parametrize(("fmt", "said"), [
    # operators Envoy 1.40 does not register, refused with its words (`envoy --mode
    # validate`, test_access_log_tls_envoy_parity.py holds the same list to it)
    ("%UPSTREAM_PEER_EMAIL_SAN%", "Not supported field in StreamInfo: UPSTREAM_PEER_EMAIL_SAN"),
    ("%UPSTREAM_LOCAL_SUBJECT%", "Not supported field in StreamInfo: UPSTREAM_LOCAL_SUBJECT"),
    ("%DOWNSTREAM_LOCAL_ISSUER%", "Not supported field in StreamInfo: DOWNSTREAM_LOCAL_ISSUER"),
    # a TLS operator takes neither an argument nor a length
    ("%DOWNSTREAM_PEER_URI_SAN(x)%", "DOWNSTREAM_PEER_URI_SAN does not take any parameters "
                                     "or length"),
    ("%UPSTREAM_TLS_VERSION:3%", "UPSTREAM_TLS_VERSION does not take any parameters or length"),
])
def test_unsupported_tls_operators_are_refused_by_name(fmt: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        TextFormat(fmt, "log_format")
    message = err.value.one_line()
    assert said in message


def test_unknown_operator_names_what_remora_supports() -> None:
    with pytest.raises(ConfigError) as err:
        TextFormat("%NO_SUCH_OPERATOR%", "log_format")
    message = err.value.one_line()
    assert "Not supported field in StreamInfo: NO_SUCH_OPERATOR" in message
    # the fix: what is supported
    assert "DOWNSTREAM_PEER_CERT_V_START()" in message and "UPSTREAM_PEER_IP_SAN" in message


def test_cipher_suites_are_read(pki: dict[str, Path]) -> None:
    chacha, aes128 = "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256"
    transport = _transport(pki, {"cipher_suites": [
        f"[{chacha}|{aes128}]", "ECDHE-ECDSA-AES256-GCM-SHA384"]})
    assert transport.ciphers == f"{chacha}:{aes128}:ECDHE-ECDSA-AES256-GCM-SHA384"
    assert transport.cipher_groups == ((chacha, aes128),)
    # an equal-preference group: the client's order decides within it (BoringSSL),
    # the server's across groups
    for offer, got in ((f"{aes128}:{chacha}", aes128), (f"{chacha}:{aes128}", chacha),
                       (f"ECDHE-ECDSA-AES256-GCM-SHA384:{aes128}", aes128),
                       ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384")):
        client = _client(pki, True, ssl.TLSVersion.TLSv1_2)
        client.set_ciphers(offer)
        srv, _ = _handshake(transport.context(), client)
        assert srv.cipher()[0] == got, offer
    with pytest.raises(ConfigError, match="rejected when tried individually: NOT-A-CIPHER"):
        _transport(pki, {"cipher_suites": ["NOT-A-CIPHER"]})


def test_iana_names_are_read_as_openssl_names(pki: dict[str, Path]) -> None:
    names = cipher_order.standard_names()
    assert names["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    transport = _transport(pki, {"cipher_suites": [
        "[TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256|ECDHE-ECDSA-AES128-GCM-SHA256]"]})
    assert transport.ciphers == "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"


def test_group_order_follows_the_client_within_each_group() -> None:
    rule = cipher_order._Rule(False, ("A", "B", "C", "D", "E"), (0, 0, None, 1, 1),
                              (1, 2, 3, 4, 5))
    offered = b"".join(n.to_bytes(2, "big") for n in (5, 2, 3, 1))
    assert cipher_order.group_order(rule, offered) == ["B", "A", "C", "E", "D"]
    assert cipher_order.group_order(rule, b"") == ["A", "B", "C", "D", "E"]


@pytest.mark.parametrize(("body", "tls13"), [
    (b"\x04\x03\x04\x03\x03", True), (b"\x02\x03\x03", False), (b"", False),
    (b"\x06\x7a\x7a\x03\x03\x03\x04", True),  # GREASE first
])
def test_supported_versions_parsing(body: bytes, tls13: bool) -> None:
    assert cipher_order.offers_tls13(body) is tls13


def test_client_order_callback_only_where_tls13_can_be_negotiated(
        pki: dict[str, Path]) -> None:
    # the callback is on every server context (it notes the client's groups too); the
    # client's order only where TLS 1.3 can be negotiated
    lib = cipher_order._libssl()
    assert lib is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert cipher_order.client_order_for_tls13(ctx)
    assert cipher_order._rules[cipher_order._ctx_pointer(ctx, lib) or 0].tls13
    capped = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    capped.maximum_version = ssl.TLSVersion.TLSv1_2
    assert cipher_order.client_order_for_tls13(capped)
    assert not cipher_order._rules[cipher_order._ctx_pointer(capped, lib) or 0].tls13
    # a handshake through the callback: TLS 1.3 negotiated, the server's list kept for 1.2
    assert _connection(pki).text("TLS_VERSION") == "TLSv1.3"
