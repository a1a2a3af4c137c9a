"""``upstream_http_protocol_options`` ``auto_sni`` / ``auto_san_validation`` /
``override_auto_sni_header``: the upstream TLS name taken from each request.

Envoy's router (source/common/router/router.cc, Filter::decodeHeaders) takes the value of
``override_auto_sni_header`` when that header is present and not empty, else the
request's host (Host/:authority, after the route's host rewrite), parses it as an
authority (Http::Utility::parseAuthority: the port and IPv6 brackets dropped) and puts
in the stream's filter state

- ``auto_sni``: that host as the upstream server name (SNI), unless it is an IP address;
- ``auto_san_validation``: that host as the SAN list the upstream certificate must match
  (an IP address too), in place of nothing: the cluster's
  ``match_typed_subject_alt_names`` still apply as well (DefaultCertValidator::
  verifyCertificate checks the override list, then the matchers).

Both become transport socket options, which are part of the connection pool's hash key
(case-insensitively), so requests for different hosts never share a connection. remora
appends ``TlsOverride.key`` to the pool key's cluster part for the same effect.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TlsOverride:
    """What one request asks of its upstream TLS connection (Envoy's
    TransportSocketOptions serverNameOverride / verifySubjectAltNameListOverride)."""

    sni: str | None  # the server name to send (None: the cluster's UpstreamTlsContext.sni)
    sans: tuple[str, ...]  # the SANs the certificate must match one of (): no override)
    key: str  # the connection pool key's suffix ("\\0" + host, lower case)


def parse_authority(value: str) -> tuple[str, bool]:
    """(host without port or brackets, whether it is an IP address), as Envoy's
    Http::Utility::parseAuthority."""
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end > 0:
            host = value[1:end]
            try:
                ipaddress.IPv6Address(host)
                return host, True
            except ValueError:
                return value, False
    colon = value.rfind(":")
    host = value
    if colon >= 0 and value.count(":") == 1:
        port = value[colon + 1:]
        if port.isdigit():
            host = value[:colon]
    elif colon >= 0:  # more than one colon, no brackets: a bare IPv6 address or junk
        try:
            ipaddress.IPv6Address(value)
            return value, True
        except ValueError:
            return value, False
    try:
        ipaddress.IPv4Address(host)
        return host, True
    except ValueError:
        return host, False


def tls_override(opts: Any, authority: str, hmap: dict[str, str]) -> TlsOverride | None:
    """The TlsOverride of a request whose (possibly rewritten) host is AUTHORITY and whose
    headers are HMAP, for a cluster with HttpProtocolOptions OPTS; None when neither
    auto_sni nor auto_san_validation is set."""
    auto_sni, auto_san = opts.auto_sni, opts.auto_san_validation
    if not (auto_sni or auto_san):
        return None
    value = authority
    header = opts.override_auto_sni_header
    if header:
        other = hmap.get(header)
        if other:  # present and not empty, else the host (router.cc)
            value = other
    host, is_ip = parse_authority(value)
    sni = host if auto_sni and not is_ip and host else None
    sans = (host,) if auto_san else ()
    return TlsOverride(sni, sans, "\0" + host.lower())


def dns_name_match(name: str, pattern: str) -> bool:
    """Envoy's Utility::dnsNameMatch: NAME against a certificate's DNS SAN PATTERN, ASCII
    case-insensitively; ``*.example.com`` matches exactly one more label."""
    name, pattern = name.lower(), pattern.lower()
    if name == pattern:
        return True
    if len(pattern) > 1 and pattern.startswith("*."):
        suffix = pattern[1:]
        return (len(name) > len(suffix) and name.endswith(suffix)
                and "." not in name[:-len(suffix)])
    return False
