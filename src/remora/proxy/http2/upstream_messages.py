"""HTTP/1.1 <-> HTTP/2 translation for the upstream side, free of I/O.

A request decoded from an HTTP/1.1 client goes upstream as HTTP/2 the way Envoy's codecs
translate it: ``host`` becomes ``:authority``, the request line gives ``:method``,
``:scheme`` and ``:path``, and the connection-specific headers RFC 9113 8.2.2 forbids are
dropped (``te`` survives only as ``trailers``). An HTTP/2 response comes back as a status
and a header list without pseudo headers, ready for the HTTP/1.1 encoder.
"""

from __future__ import annotations

# RFC 9113 8.2.2: connection-specific header fields are malformed in HTTP/2
CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                 "transfer-encoding", "upgrade", "host"})

# Envoy's response code details / reset reasons for an upstream HTTP/2 stream reset
# (source/common/http/utility.cc resetReasonToString; router.cc
# upstream_reset_before_response_started{...}), keyed by the RST_STREAM error code.
REFUSED_STREAM = 7
REMOTE_REFUSED = ("remote refused stream reset", "remote_refused_stream_reset")
REMOTE_RESET = ("remote reset", "remote_reset")


def request_headers(method: str, scheme: str, path: str,
                    headers: list[tuple[str, str]],
                    extra: tuple[str, str] | None) -> list[tuple[str, str]]:
    """The HTTP/2 header block for a request whose HTTP/1.1 form is HEADERS (the
    forwarded list, ``host`` first) plus EXTRA."""
    authority = ""
    rest: list[tuple[str, str]] = []
    for n, v in headers:
        if n == "host":
            authority = v
        elif n in CONNECTION_SPECIFIC or (n == "te" and v.strip().lower() != "trailers"):
            continue
        else:
            rest.append((n, v))
    if extra is not None:
        rest.append(extra)
    # pseudo headers in the order Envoy's HTTP/1 codec creates them and its HTTP/2 codec
    # sends them (observed on Envoy 1.40: :authority :path :method :scheme)
    out = [(":authority", authority)]
    if method != "CONNECT":
        out.append((":path", path))
    out += [(":method", method), (":scheme", scheme)]
    out.extend(rest)
    return out


def response_head(headers: list[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]]:
    """(status, headers without pseudo headers) of an HTTP/2 response header block."""
    status = 0
    out: list[tuple[str, str]] = []
    for n, v in headers:
        if n == ":status":
            status = int(v)
        elif not n.startswith(":"):
            out.append((n, v))
    return status, out


def trailer_fields(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers if not n.startswith(":")]


def reset_reason(error_code: int) -> tuple[str, str]:
    """(body reason, details) of a RST_STREAM from the upstream."""
    return REMOTE_REFUSED if error_code == REFUSED_STREAM else REMOTE_RESET
