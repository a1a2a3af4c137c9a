"""x-forwarded-client-cert's parts without a proxy (http/xfcc.py, transport/cert_details.py),
with real certificates from the project's CertificateAuthority: the value per mode for a
client header absent/present and a plain/mutual-TLS connection, this hop's element per
set_current_client_cert_details field, the RFC 2253 subject against the openssl command,
the request hook's effect on the headers to set/remove, and what the TLS transport hands
over after a real handshake (the chain the peer sent, the local certificate's URI SANs).
test_xfcc_envoy_parity.py holds the whole to Envoy 1.40."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from remora.controlplane.ca import CertificateAuthority
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.xfcc import (
    XFCC,
    XfccConfig,
    element,
    mutate_request,
    parse_xfcc,
    request_value,
)
from remora.proxy.transport import tls
from remora.proxy.transport.cert_details import (
    TlsPeer,
    subject_rfc2253,
    url_encode,
)
from tests.unit.proxy.xfcc_certs import RICH_DNS, RICH_URIS, rich_client

SERVER_ID = "spiffe://cluster.local/ns/demo-to/sa/default"
CLIENT_ID = "spiffe://cluster.local/ns/demo-from/sa/default"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("xfcc-pki")
    ca = CertificateAuthority(tmp / "ca")
    ca.ensure_workload(tmp / "server", "demo-to")
    ca.ensure_workload(tmp / "client", "demo-from")
    return {"server": tmp / "server", "client": tmp / "client",
            "rich": rich_client(ca, tmp / "rich")}


def _chain(directory: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((directory / "cert-chain.pem").read_bytes())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- the value per mode ------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "existing", "hop", "want"), [
    # plain text (or TLS without a client certificate): hop None
    ("SANITIZE", None, None, None), ("SANITIZE", "By=a", None, None),
    ("FORWARD_ONLY", "By=a", None, None), ("APPEND_FORWARD", "By=a", None, None),
    ("SANITIZE_SET", "By=a", None, None), ("APPEND_FORWARD", None, None, None),
    ("ALWAYS_FORWARD_ONLY", "By=a", None, "By=a"), ("ALWAYS_FORWARD_ONLY", None, None, None),
    # mutual TLS
    ("SANITIZE", "By=a", "H", None), ("SANITIZE", None, "H", None),
    ("FORWARD_ONLY", "By=a", "H", "By=a"), ("FORWARD_ONLY", None, "H", None),
    ("APPEND_FORWARD", "By=a", "H", "By=a,H"), ("APPEND_FORWARD", None, "H", "H"),
    ("APPEND_FORWARD", "", "H", "H"),  # an empty header: no leading comma (appendToHeader)
    ("SANITIZE_SET", "By=a", "H", "H"), ("SANITIZE_SET", None, "H", "H"),
    ("ALWAYS_FORWARD_ONLY", "By=a", "H", "By=a"),
])
def test_request_value_per_mode(mode: str, existing: str | None, hop: str | None,
                                want: str | None) -> None:
    assert request_value(mode, existing, hop) == want


# -- this hop's element ------------------------------------------------------------------
def test_istio_element_is_by_hash_subject_uri(pki: dict[str, Path]) -> None:
    leaf = _chain(pki["client"])[0]
    cfg = XfccConfig("APPEND_FORWARD", ("subject", "uri", "dns"))
    got = element(cfg, (SERVER_ID,), _der(leaf), ())
    digest = hashlib.sha256(_der(leaf)).hexdigest()
    # what Envoy 1.40 sends in the lab (empty subject, no DNS SAN: no DNS= at all)
    assert got == f'By={SERVER_ID};Hash={digest};Subject="";URI={CLIENT_ID}'


def test_element_without_details_is_by_and_hash(pki: dict[str, Path]) -> None:
    leaf = _chain(pki["client"])[0]
    digest = hashlib.sha256(_der(leaf)).hexdigest()
    assert element(XfccConfig("SANITIZE_SET"), (), _der(leaf), ()) == f"Hash={digest}"
    assert element(XfccConfig("SANITIZE_SET"), ("spiffe://a", "spiffe://b"), _der(leaf),
                   ()) == f"By=spiffe://a;By=spiffe://b;Hash={digest}"


def test_element_every_detail_in_envoys_order(pki: dict[str, Path]) -> None:
    leaf, root = _chain(pki["rich"])
    chain = (_der(leaf), _der(root))
    cfg = parse_xfcc("APPEND_FORWARD", Fields({"dns": True, "uri": True, "subject": True,
                                               "chain": True, "cert": True}, "scc"))
    assert cfg is not None and cfg.details == ("cert", "chain", "subject", "uri", "dns")
    parts = _split(element(cfg, (SERVER_ID,), chain[0], chain))
    keys = [p.split("=", 1)[0] for p in parts]
    assert keys == ["By", "Hash", "Cert", "Chain", "Subject", "URI", "URI", "DNS", "DNS"]
    values = dict(p.split("=", 1) for p in parts[:5])
    pem = ssl.DER_cert_to_PEM_cert(chain[0])
    assert urllib.parse.unquote(values["Cert"].strip('"')) == pem
    assert urllib.parse.unquote(values["Chain"].strip('"')) == \
        pem + ssl.DER_cert_to_PEM_cert(chain[1])
    # URL-encoded as Envoy's PercentEncoding::urlEncode: only ALPHA DIGIT * - . _ stay
    assert "%0A" in values["Cert"] and "%20" in values["Cert"] and "/" not in values["Cert"]
    assert [p.split("=", 1)[1] for p in parts[5:7]] == list(RICH_URIS)
    assert [p.split("=", 1)[1] for p in parts[7:]] == list(RICH_DNS)


def _split(value: str) -> list[str]:
    """The ";"-separated pairs of one element; a quoted value may hold ";" (the subject's
    escaped one) and backslash-escaped quotes."""
    parts, cur, quoted, escaped = [], "", False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [*parts, cur]


def test_uri_present_even_without_uri_san(pki: dict[str, Path]) -> None:
    root = _chain(pki["client"])[1]  # the root: no SAN at all
    got = element(XfccConfig("SANITIZE_SET", ("uri", "dns")), (), _der(root), ())
    assert got.endswith(";URI=")
    assert "DNS=" not in got


def test_url_encode_is_envoys_set() -> None:
    assert url_encode(b"aZ09*-._~ /+=\n%") == "aZ09*-._%7E%20%2F%2B%3D%0A%25"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_subject_is_rfc2253_as_openssl_prints_it(pki: dict[str, Path]) -> None:
    """X509_NAME_print_ex(XN_FLAG_RFC2253), the function Envoy calls, as the openssl
    command runs it: escapes, UTF-8 bytes as \\XX, multi-valued RDNs, an unknown OID
    dumped as DER."""
    path = pki["rich"] / "cert-chain.pem"
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253",
                          "-in", str(path)], capture_output=True, text=True, check=True)
    want = out.stdout.strip().removeprefix("subject=")
    got = subject_rfc2253(_der(_chain(pki["rich"])[0]))
    assert got == want
    assert "\\C3\\A9" in got and "O=Acme\\, Inc\\+Co+OU=\\#ops\\ " in got  # not trivial
    assert subject_rfc2253(_der(_chain(pki["client"])[0])) == ""


# -- config ------------------------------------------------------------------------------
def test_parse_xfcc() -> None:
    assert parse_xfcc("SANITIZE", Fields({"subject": True}, "scc")) is None
    always = parse_xfcc("ALWAYS_FORWARD_ONLY", None)
    assert always is not None and always.any_connection
    fwd = parse_xfcc("FORWARD_ONLY", None)
    assert fwd is not None and not fwd.any_connection and fwd.details == ()
    off = parse_xfcc("APPEND_FORWARD", Fields({"subject": False, "uri": True}, "scc"))
    assert off is not None and off.details == ("uri",)
    with pytest.raises(ConfigError, match="ip"):
        parse_xfcc("APPEND_FORWARD", Fields({"ip": True}, "scc"))


# -- the request hook --------------------------------------------------------------------
REMOVED = frozenset({XFCC, "x-envoy-retry-on"})
DROPPED = REMOVED | {"connection"}


def _peer(pki: dict[str, Path]) -> TlsPeer:
    leaf = _chain(pki["client"])[0]
    return TlsPeer(_der(leaf), (_der(leaf),), (SERVER_ID,))


def test_hook_appends_the_element_last_when_absent(pki: dict[str, Path]) -> None:
    peer = _peer(pki)
    cfg = XfccConfig("APPEND_FORWARD", ("uri",))
    sets = [("x-forwarded-proto", "https")]
    removed, _, in_place = mutate_request(cfg, peer, {"host": "a"}, frozenset(), sets,
                                          REMOVED, DROPPED)
    hop = element(cfg, peer.local_uri_sans, peer.der, peer.chain)
    assert sets == [("x-forwarded-proto", "https"), (XFCC, hop)]
    assert XFCC not in removed and not in_place  # visible to routes and the access log
    # built once per connection: the cache holds it for this config
    assert peer.xfcc == (cfg, hop)
    peer.xfcc = (cfg, "cached")
    again: list[tuple[str, str]] = []
    mutate_request(cfg, peer, {}, frozenset(), again, REMOVED, DROPPED)
    assert again == [(XFCC, "cached")]


def test_hook_replaces_the_clients_header_in_place(pki: dict[str, Path]) -> None:
    peer = _peer(pki)
    for mode, want in (("APPEND_FORWARD", "By=x,{hop}"), ("SANITIZE_SET", "{hop}"),
                       ("FORWARD_ONLY", "By=x")):
        cfg = XfccConfig(mode)
        hop = element(cfg, peer.local_uri_sans, peer.der, peer.chain)
        sets: list[tuple[str, str]] = []
        removed, dropped, in_place = mutate_request(cfg, peer, {XFCC: "By=x"}, frozenset(),
                                                    sets, REMOVED, DROPPED)
        assert sets == [(XFCC, want.format(hop=hop))], mode
        assert in_place and XFCC not in removed and XFCC not in dropped
        assert "x-envoy-retry-on" in removed and "connection" in dropped


def test_hook_leaves_forward_only_without_header_alone(pki: dict[str, Path]) -> None:
    sets: list[tuple[str, str]] = []
    got = mutate_request(XfccConfig("FORWARD_ONLY"), _peer(pki), {}, frozenset(), sets,
                         REMOVED, DROPPED)
    assert got == (REMOVED, DROPPED, False) and sets == []


def test_hook_nominated_header_is_gone_before(pki: dict[str, Path]) -> None:
    """Connection: x-forwarded-client-cert: Envoy's codec removed the client's line before
    the connection manager appends, so the value is this hop's alone."""
    peer = _peer(pki)
    cfg = XfccConfig("APPEND_FORWARD")
    sets: list[tuple[str, str]] = []
    nominated = frozenset({XFCC})
    removed, dropped, in_place = mutate_request(cfg, peer, {XFCC: "By=x"}, nominated, sets,
                                                REMOVED | nominated, DROPPED | nominated)
    assert sets == [(XFCC, element(cfg, peer.local_uri_sans, peer.der, peer.chain))]
    assert not in_place and XFCC in dropped and XFCC not in removed


def test_hook_always_forward_only_without_peer() -> None:
    cfg = XfccConfig("ALWAYS_FORWARD_ONLY", any_connection=True)
    sets: list[tuple[str, str]] = []
    _, _, in_place = mutate_request(cfg, None, {XFCC: "By=a,By=b"}, frozenset(), sets,
                                    frozenset(), frozenset())
    assert sets == [(XFCC, "By=a,By=b")] and in_place


# -- what the TLS transport hands over ---------------------------------------------------
def _transport(certs: Path, server: bool) -> tls.TlsTransport:
    common = {"tls_certificates": [{
        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
        "private_key": {"filename": str(certs / "key.pem")}}],
        "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}}}
    kind = "DownstreamTlsContext" if server else "UpstreamTlsContext"
    typed: dict[str, object] = {
        "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}",
        "common_tls_context": common}
    t = tls.parse_transport_socket(Fields({"name": "envoy.transport_sockets.tls",
                                           "typed_config": typed}, "ts"), server)
    assert t is not None
    return t


def test_handshake_gives_chain_leaf_first_and_local_uri_sans(pki: dict[str, Path]) -> None:
    (pki["rich"] / "root-cert.pem").write_bytes((pki["server"] / "root-cert.pem").read_bytes())
    server_t = _transport(pki["server"], True)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = _transport(pki["rich"], False).context().wrap_bio(c_in, c_out,
                                                               server_hostname="x")
    server = server_t.context().wrap_bio(s_in, s_out, server_side=True)
    assert server_t.local_uri_sans == (SERVER_ID,)
    for _ in range(10):
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert tls._ENCODING_DER == ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
    sent = tuple(_der(c) for c in _chain(pki["rich"]))
    assert tls._peer_chain(server) == sent  # leaf then root, as the client sent them
    assert server.getpeercert(binary_form=True) == sent[0]


def test_sans_read_from_der_as_cryptography_reads_them(pki: dict[str, Path]) -> None:
    """cert_details walks the DER itself (no cryptography import in the sidecar): the URI
    and DNS SANs, in the certificate's order, are those the cryptography package reads,
    for the rich certificate (several of each) and a workload one (one URI, no DNS)."""
    from remora.proxy.transport.cert_details import dns_sans, pem_uri_sans, uri_sans
    for name in ("rich", "client"):
        leaf = _chain(pki[name])[0]
        try:
            ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            want_uri = tuple(ext.get_values_for_type(x509.UniformResourceIdentifier))
            want_dns = tuple(ext.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            want_uri = want_dns = ()
        assert uri_sans(_der(leaf)) == want_uri
        assert dns_sans(_der(leaf)) == want_dns
        assert pem_uri_sans((pki[name] / "cert-chain.pem").read_bytes()) == want_uri
    assert uri_sans(_der(_chain(pki["rich"])[0])) == RICH_URIS
    assert pem_uri_sans(b"not a certificate") == ()
    with pytest.raises(ValueError):
        uri_sans(b"\x30\x10\x30")  # truncated
