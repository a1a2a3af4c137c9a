"""Repeated header lines as Envoy's header map holds them.

Envoy's HeaderMapImpl::insertByKey (source/common/http/header_map_impl.cc) keeps one entry
for each *inline* header and appends a repeated one's value to it (appendToHeader: an
empty value adds nothing; a value after an empty one comes without a delimiter; ``,``
otherwise, ``; `` for an inline cookie, which 1.40 has not); every other header repeated
stays separate entries, in their order. What the app behind the proxy sees (and a client
sees of a response) follows from that: a repeated user-agent arrives as one joined line,
two cookie lines as two.

Which headers are inline is what the binary registers: the core lists
(INLINE_REQ_HEADERS, INLINE_REQ_RESP_HEADERS, INLINE_RESP_HEADERS, ... in
envoy/http/header_map.h) and the names extensions linked into it register with
RegisterCustomInlineHeader (authorization, accept-encoding, origin, cache-control, ...).
Envoy 1.40 prints the final lists at start ("HTTP header map info"); the sets below are
those lists (pseudo-headers as their HTTP/1.1 names: :authority is host), checked against
the real Envoy by tests/unit/proxy/http/test_header_join_parity.py.
"""

from __future__ import annotations

INLINE_REQUEST = frozenset((
    "host", "accept", "accept-encoding", "access-control-request-headers",
    "access-control-request-method", "access-control-request-private-network",
    "authentication", "authorization", "cache-control", "cdn-loop", "connection",
    "content-encoding", "content-length", "content-type", "expect", "grpc-accept-encoding",
    "grpc-timeout", "if-match", "if-modified-since", "if-none-match", "if-range",
    "if-unmodified-since", "keep-alive", "origin", "pragma", "proxy-connection",
    "proxy-status", "referer", "te", "transfer-encoding", "upgrade", "user-agent", "via",
    "x-client-trace-id", "x-envoy-attempt-count", "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms", "x-envoy-external-address", "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout", "x-envoy-internal", "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry", "x-envoy-max-retries", "x-envoy-original-host",
    "x-envoy-original-path", "x-envoy-original-url", "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes", "x-envoy-retry-grpc-on", "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms", "x-forwarded-client-cert", "x-forwarded-for",
    "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto", "x-request-id",
))

INLINE_RESPONSE = frozenset((
    "access-control-allow-credentials", "access-control-allow-headers",
    "access-control-allow-methods", "access-control-allow-origin",
    "access-control-allow-private-network", "access-control-expose-headers",
    "access-control-max-age", "age", "cache-control", "connection", "content-encoding",
    "content-length", "content-type", "date", "etag", "expires", "grpc-message",
    "grpc-status", "keep-alive", "last-modified", "location", "proxy-connection",
    "proxy-status", "server", "transfer-encoding", "upgrade", "vary", "via",
    "x-envoy-attempt-count", "x-envoy-decorator-operation", "x-envoy-degraded",
    "x-envoy-immediate-health-check-fail", "x-envoy-ratelimited", "x-envoy-upstream-canary",
    "x-envoy-upstream-healthchecked-cluster", "x-envoy-upstream-service-time",
    "x-request-id",
))


def appended(prev: str, value: str) -> str:
    """PREV with VALUE appended as Envoy's HeaderMapImpl::appendToHeader does: nothing
    for an empty VALUE, no delimiter after an empty PREV, ``,`` otherwise."""
    if not value:
        return prev
    return f"{prev},{value}" if prev else value


def set_first(headers: list[tuple[str, str]], name: str, value: str) -> None:
    """The first NAME line of HEADERS gets VALUE (where Envoy's inline entry stays)."""
    for i, h in enumerate(headers):
        if h[0] == name:
            headers[i] = (name, value)
            return


def join_inline(headers: list[tuple[str, str]],
                inline: frozenset[str]) -> list[tuple[str, str]]:
    """HEADERS (names lower-case) as Envoy's header map holds them: a repeated name of
    INLINE joined into its first line, any other repeated name left as separate lines."""
    out: list[tuple[str, str]] = []
    at: dict[str, int] = {}
    for n, v in headers:
        if n in inline:
            i = at.get(n)
            if i is not None:
                out[i] = (n, appended(out[i][1], v))
                continue
            at[n] = len(out)
        out.append((n, v))
    return out


def response_joined(headers: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """An upstream response's HEADERS with a repeated inline name joined, or None when
    no inline name repeats (a repeated set-cookie stays as it is).

    The encoders call it only when the dict they build for the access log came out
    shorter than the header list, i.e. a name repeated: nothing for the usual response.
    Envoy's response header map joins a repeated inline one (server, content-type,
    location, ...) into its first line, with ',', and keeps any other as separate lines
    (checked against Envoy 1.40): the encoder then makes the head again from the joined
    headers, before anything left it (the encoder filters only append to the list)."""
    again = join_inline(headers, INLINE_RESPONSE)
    return again if len(again) < len(headers) else None


def repeated_response_view(hl: list[tuple[str, str]], headers: list[tuple[str, str]],
                           joined: bool) -> list[tuple[str, str]] | dict[str, str]:
    """For a response head HL (as encoded from the upstream's HEADERS) that repeats a
    name: a list, HEADERS with Envoy's inline names joined, to encode again instead (when
    not JOINED yet and one was repeated); else the map the access log's %RESP()% reads,
    each repeated name at its first value (Envoy's HeaderFormatter: get(name)[0];
    checked against Envoy 1.40). Both streams' encode_headers use it."""
    if not joined and (again := response_joined(headers)) is not None:
        return again
    return first_values(hl)


def first_values(headers: list[tuple[str, str]]) -> dict[str, str]:
    """HEADERS as a map whose repeated names keep their first value (what Envoy's header
    map get(name)[0] gives for a name held as separate entries)."""
    out: dict[str, str] = {}
    for n, v in headers:
        if n not in out:
            out[n] = v
    return out
