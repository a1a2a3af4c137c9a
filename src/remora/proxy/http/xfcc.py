"""``x-forwarded-client-cert`` as Envoy's HTTP connection manager sets it
(ConnectionManagerUtility::mutateXfccRequestHeader, source/common/http/conn_manager_utility.cc).

``forward_client_cert_details``:

- ALWAYS_FORWARD_ONLY: the client's header goes on unchanged, whatever the connection;
- any other mode removes it on a connection that is not mutual TLS (plain text, or TLS
  whose client presented no certificate), and SANITIZE removes it always;
- on mutual TLS, FORWARD_ONLY forwards the client's header unchanged; APPEND_FORWARD
  appends this hop's element to it (``,`` between elements) or sets it when there is none;
  SANITIZE_SET replaces it with this hop's element.

This hop's element is ``;``-separated ``key=value`` pairs in Envoy's order: ``By=`` for
each URI SAN of the local certificate, ``Hash=`` the hex SHA-256 of the peer's
certificate, then what ``set_current_client_cert_details`` asks for, in the order Envoy
fixes (cert, chain, subject, uri, dns): ``Cert="<url-encoded PEM>"``,
``Chain="<url-encoded PEM chain>"``, ``Subject="<RFC 2253>"`` (present even when empty),
``URI=`` for each URI SAN of the peer (``URI=`` alone when it has none), ``DNS=`` for each
DNS SAN. It depends only on the connection, so it is built once per connection (cached
on the TLS peer) and a request pays for the header alone.

Removal on a plain connection is the RequestPolicy's (headers.py: the header is among the
names every request loses unless ALWAYS_FORWARD_ONLY); ``mutate_request`` is the hook
ActiveStream.prepare calls for an mTLS downstream when the mode keeps or sets the header,
and for ALWAYS_FORWARD_ONLY on any connection (repeated lines of the client's header go
on as one, joined by ``,``: Envoy's header map holds it as one inline header).
"""

from __future__ import annotations

from remora.proxy.config.strict import Fields
from remora.proxy.transport.cert_details import (
    TlsPeer,
    dns_sans,
    sha256_hex,
    subject_rfc2253,
    uri_sans,
    url_encoded_pem,
    url_encoded_pem_chain,
)

XFCC = "x-forwarded-client-cert"
MODES = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")
# set_current_client_cert_details, in the order Envoy adds them (convertSetCurrentClientCertDetails)
DETAILS = ("cert", "chain", "subject", "uri", "dns")
# the modes that do something on mutual TLS besides removing the header
_MTLS_MODES = frozenset({"FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET"})
_XFCC_ONLY = frozenset({XFCC})


class XfccConfig:
    """forward_client_cert_details and the set_current_client_cert_details that are on,
    in Envoy's order; compared by identity (each connection manager has its own)."""

    __slots__ = ("adds", "any_connection", "details", "mode")

    def __init__(self, mode: str, details: tuple[str, ...] = (),
                 any_connection: bool = False) -> None:
        self.mode = mode
        self.details = details
        # the hook runs on every connection, not only for an mTLS peer:
        # ALWAYS_FORWARD_ONLY forwards the client's header everywhere, its repeated lines
        # joined into one
        self.any_connection = any_connection
        # this hop's element goes into the header (an attribute: read per request)
        self.adds = mode in ("APPEND_FORWARD", "SANITIZE_SET")


def parse_xfcc(mode: str, scc: Fields | None) -> XfccConfig | None:
    """The connection manager's config for the request hook; None for SANITIZE, whose
    removal is the RequestPolicy's alone. SCC is the
    ``set_current_client_cert_details`` message (``subject`` is a BoolValue, the others
    bools); it is read whatever the mode, as Envoy validates it."""
    details: list[str] = []
    if scc is not None:
        for name in DETAILS:
            if scc.boolean(name, False):
                details.append(name)
        scc.done()
    if mode == "ALWAYS_FORWARD_ONLY":
        return XfccConfig(mode, tuple(details), any_connection=True)
    if mode not in _MTLS_MODES:
        return None
    return XfccConfig(mode, tuple(details))


def element(cfg: XfccConfig, local_uri_sans: tuple[str, ...], der: bytes,
            chain: tuple[bytes, ...]) -> str:
    """This hop's element for a peer certificate DER (and the CHAIN it sent, leaf first)
    on a connection whose local certificate has LOCAL_URI_SANS."""
    parts = [f"By={uri}" for uri in local_uri_sans]
    parts.append(f"Hash={sha256_hex(der)}")
    if cfg.details:
        for detail in cfg.details:
            if detail == "cert":
                parts.append(f'Cert="{url_encoded_pem(der)}"')
            elif detail == "chain":
                pem_chain = url_encoded_pem_chain(chain)
                if pem_chain:
                    parts.append(f'Chain="{pem_chain}"')
            elif detail == "subject":
                parts.append(f'Subject="{subject_rfc2253(der)}"')
            elif detail == "uri":
                parts += [f"URI={uri}" for uri in uri_sans(der)] or ["URI="]
            else:  # dns
                parts += [f"DNS={name}" for name in dns_sans(der)]
    return ";".join(parts)


def request_value(mode: str, existing: str | None, hop: str | None) -> str | None:
    """The header a request goes on with (None: none), from the client's value EXISTING
    (repeated lines joined by ``,``, as Envoy's header map joins them) and this hop's
    element HOP (None: the connection is not mutual TLS)."""
    if mode == "ALWAYS_FORWARD_ONLY":
        return existing
    if mode == "SANITIZE" or hop is None:
        return None
    if mode == "FORWARD_ONLY":
        return existing
    if mode == "APPEND_FORWARD":
        return f"{existing},{hop}" if existing else hop
    return hop  # SANITIZE_SET


def connection_element(cfg: XfccConfig, peer: TlsPeer) -> str:
    """This hop's element for the connection of PEER, built on its first request."""
    cached = peer.xfcc
    if cached is None or cached[0] is not cfg:
        cached = peer.xfcc = (cfg, element(cfg, peer.local_uri_sans, peer.der, peer.chain))
    return cached[1]


_without_cache: dict[frozenset[str], frozenset[str]] = {}


def _without_xfcc(names: frozenset[str]) -> frozenset[str]:
    kept = _without_cache.get(names)
    if kept is None:
        kept = names - _XFCC_ONLY
        if len(_without_cache) < 64:  # the policies' fixed sets; not per-request ones
            _without_cache[names] = kept
    return kept


def mutate_request(cfg: XfccConfig, peer: TlsPeer | None, hmap: dict[str, str],
                   nominated: frozenset[str], sets: list[tuple[str, str]],
                   removed: frozenset[str], dropped: frozenset[str],
                   ) -> tuple[frozenset[str], frozenset[str], bool]:
    """ActiveStream.prepare's hook for a request on an mTLS connection whose PEER
    presented a certificate (on any connection, PEER then None, for ALWAYS_FORWARD_ONLY):
    the header to send joins SETS (appended last, as Envoy's
    mutateXfccRequestHeader runs after the other request mutations), and comes out of
    REMOVED/DROPPED (the names the request loses, from the RequestPolicy). Returns those
    and whether the client's header is replaced in place (where it stood, as Envoy sets
    an existing header; repeated lines become one). A header nominated in Connection is
    gone before (Envoy's codec removes it first). The header set stays visible to route
    matching and the access log (out of REMOVED)."""
    if peer is not None and cfg.adds:
        cached = peer.xfcc
        hop = cached[1] if cached is not None and cached[0] is cfg \
            else connection_element(cfg, peer)
        if XFCC not in hmap:
            # the usual request (Istio's inbound): this hop's element, appended; a call
            # costs a few thousand instructions here, so nothing else is called
            sets.append((XFCC, hop))
            kept = _without_cache.get(removed)
            return (kept if kept is not None else _without_xfcc(removed)), dropped, False
    else:
        hop = ""
    existing = hmap.get(XFCC) if XFCC not in nominated else None
    value = request_value(cfg.mode, existing, hop)
    if value is None:
        return removed, dropped, False
    sets.append((XFCC, value))
    if existing is not None:  # replaced where it stood
        return _without_xfcc(removed), _without_xfcc(dropped), True
    return _without_xfcc(removed), dropped, False  # a nominated line is dropped
