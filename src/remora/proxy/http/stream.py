"""One HTTP/1.1 request/response exchange on a downstream connection (Envoy's ActiveStream).

Builds the request that goes upstream (headers.py's mutation, Envoy's header order: host
first, then the client's headers, then what the connection manager adds), resolves the route,
runs the HTTP filters, writes the response downstream, and at the end hands the request's
StreamInfo to the connection manager's access loggers.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, ClassVar, cast

from remora.native import mypyc_attr
from remora.proxy.http.codec import Request, status_line
from remora.proxy.http.header_map import repeated_response_view
from remora.proxy.http.header_matcher import RepeatedHeaders
from remora.proxy.http.header_mutation import HeaderMutations
from remora.proxy.http.header_mutation import apply as apply_mutations
from remora.proxy.http.headers import (
    connection_nominated,
    escaped_slashes,
    normalize_path,
    path_needs_work,
    request_scheme,
    split_absolute,
    unescape_slashes,
)
from remora.proxy.http.route_config import Route
from remora.proxy.http.xfcc import mutate_request as mutate_xfcc
from remora.proxy.stream_info import StreamInfo, format_address

if TYPE_CHECKING:
    from remora.proxy.http.connection import Http1Connection
    from remora.proxy.http.filter import EncoderFilter
    from remora.proxy.http2.stream import StreamConn

_NONE: frozenset[str] = frozenset()
_RESPONSE_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding"})
# response headers encode_headers looks at; any other is passed on as it is
_RESPONSE_SPECIAL = _RESPONSE_HOP | {"upgrade", "content-length", "server",
                                     "x-envoy-upstream-service-time"}
_date_cache: tuple[int, str] = (0, "")


def http_date_text() -> str:
    """The date header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _forward_headers(headers: list[tuple[str, str]], dropped: frozenset[str],
                     sets: list[tuple[str, str]], websocket: bool, upgrade: bool,
                     out: list[tuple[str, str]]) -> None:
    """The client's headers as forwarded, onto OUT: DROPPED ones left out except an
    Upgrade that goes on (WEBSOCKET), ``te: trailers`` (when TE lists it) and an Expect
    other than 100-continue; the content-length of an
    Upgrade request left out; a header in SETS replaced in place (sent once), the others
    of SETS appended."""
    setmap = dict(sets)
    placed: set[str] = set()
    for n, v in headers:
        if n in dropped or (upgrade and n == "content-length"):
            if n == "upgrade" and websocket:
                out.append((n, v))
            elif n == "te":
                # Envoy keeps TE only as "trailers", when that is one of its values
                # ("gzip, trailers" goes on as "trailers"; "trailers;q=1" and "Trailers"
                # not at all: the token compares case-sensitively; checked against
                # Envoy 1.40)
                if "trailers" in (t.strip() for t in v.split(",")):
                    out.append((n, "trailers"))
            elif n == "expect" and v.lower() != "100-continue":
                # only the 100-continue Envoy answers itself is taken out; any other
                # expectation (a repeated 100-continue joined is one) goes on
                out.append((n, v))
            continue
        if n in setmap:
            if n in placed:
                continue  # a repeated header that was set is sent once
            v = setmap[n]
            placed.add(n)
        out.append((n, v))
    for n, v in sets:
        if n not in placed:
            out.append((n, v))


def is_upgrade_response(headers: list[tuple[str, str]]) -> bool:
    """Envoy's Http::Utility::isUpgrade on a response: a Connection header naming the
    token ``upgrade`` (any case) and an Upgrade header."""
    upgrade = connection = False
    for n, v in headers:
        if n == "upgrade":
            upgrade = True
        elif n == "connection" and any(
                t.strip().lower() == "upgrade" for t in v.split(",")):
            connection = True
    return upgrade and connection


def is_grpc_content_type(content_type: str | None) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: exactly ``application/grpc`` or
    ``application/grpc+...`` (``application/grpc-web`` is not gRPC)."""
    return content_type is not None and content_type.startswith("application/grpc") and (
        len(content_type) == 16 or content_type[16] == "+")


# Envoy's Grpc::Utility::grpcToHttpStatus for the codes it maps to 5xx: UNKNOWN,
# DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS (an invalid or unknown
# value is InvalidCode, 500 too)
_GRPC_NOT_5XX = frozenset({0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16})


def grpc_host_outcome(grpc_status: str | None) -> str:
    """The host stat a gRPC response's grpc-status (None: there was none) charges: Envoy's
    router counts rq_success only for a grpc-status grpcToHttpStatus maps to no 5xx
    (Filter::handleNon5xxResponseHeaders, onUpstreamTrailers; checked against Envoy
    1.40: tests/unit/proxy/http2/test_grpc_host_stats_envoy_parity.py)."""
    if grpc_status is None:
        return "rq_error"
    value = grpc_status.strip()
    return "rq_success" if value.isdigit() and int(value) in _GRPC_NOT_5XX else "rq_error"


def host_outcome(status: int, grpc_request: bool, headers: list[tuple[str, str]],
                 ended: bool) -> str | None:
    """The host stat (rq_success / rq_error) a response head of STATUS charges, as Envoy's
    router does: a 5xx is an error; a gRPC request's other response is charged by its
    grpc-status, from HEADERS when they ENDED the response (trailers-only), else None:
    deferred to the trailers (no trailers, or a reset, is an error then); any other
    request's is a success."""
    if status >= 500:
        return "rq_error"
    if not grpc_request:
        return "rq_success"
    if not ended:
        return None
    for n, v in headers:
        if n == "grpc-status":
            return grpc_host_outcome(v)
    return "rq_error"


def http_to_grpc_status(status: int) -> int:
    """Envoy's Grpc::Utility::httpToGrpcStatus (after gRPC's http-grpc-status-mapping)."""
    if status == 400:
        return 13  # INTERNAL
    if status == 401:
        return 16  # UNAUTHENTICATED
    if status == 403:
        return 7  # PERMISSION_DENIED
    if status == 404:
        return 12  # UNIMPLEMENTED
    if status in (429, 502, 503, 504):
        return 14  # UNAVAILABLE
    return 2  # UNKNOWN


def grpc_message(body: bytes) -> str:
    """A local reply's body as grpc-message, percent-encoded as Envoy's
    Http::Utility::PercentEncoding::encode does: bytes below space, from ``~`` up, and
    ``%`` as ``%XX`` in upper-case hex, a trailing newline included (``caf%C3%A9 %7E
    100%25%0A``, observed on Envoy 1.40)."""
    return "".join(f"%{b:02X}" if b < 0x20 or b >= 0x7E or b == 0x25 else chr(b)
                   for b in body)


# what the upstream codec writes after every other header (upstream_framing)
_CHUNKED = ("transfer-encoding", "chunked")
_LENGTH_ZERO = ("content-length", "0")
_BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "CONNECT", "TRACE"})


# compiled by mypyc (remora/native.py), yet http2/stream.py's Http2Stream, pure Python,
# subclasses it
@mypyc_attr(allow_interpreted_subclasses=True)
class ActiveStream:
    # what a bodiless local reply ends its head with: Envoy's HTTP/1 codec writes
    # content-length: 0 last when the headers end the response (its HTTP/2 codec does not)
    # (a ClassVar: mypyc makes any other class-level value an instance attribute's default,
    # which Http2Stream's class attribute would not override)
    BODILESS_TAIL: ClassVar[tuple[tuple[str, str], ...]] = (("content-length", "0"),)
    __slots__ = ("authority", "closing", "conn", "cors_origin", "encoders", "head", "idle_timer",
                 "info", "method", "out", "path", "req", "resp_chunked", "response_complete",
                 "response_started", "route", "upstream_chunked", "upstream_framing",
                 "upstream_headers")

    def __init__(self, conn: Http1Connection | StreamConn, req: Request) -> None:
        # (an HTTP/2 stream's StreamConn: typed as what it is, as mypyc checks the type)
        self.conn = conn
        self.req = req
        self.info = StreamInfo.for_request(conn.downstream.info, "HTTP/1.1")
        self.method = req.method
        self.head = req.method == "HEAD"
        self.path = ""
        self.authority = ""
        self.route: Route | None = None
        self.upstream_headers: list[tuple[str, str]] = []
        self.upstream_chunked = False  # the forwarded head says transfer-encoding: chunked
        self.upstream_framing: tuple[str, str] | None = None  # what the codec adds last
        self.response_started = False
        self.response_complete = False
        self.resp_chunked = False
        self.closing = not req.keep_alive
        self.cors_origin: tuple[str, object] | None = None  # set by the cors filter
        self.out: list[bytes] = []  # response bytes not yet written (see flush)
        self.idle_timer: asyncio.TimerHandle | None = None  # stream_idle_timeout
        # the encoder filters that act on this stream (the connection manager narrows them
        # to its route's chain once routed)
        self.encoders: list[EncoderFilter] = conn.encoders

    # -- request side ---------------------------------------------------------------------
    def prepare(self) -> bool:
        """Decode-side work of the connection manager; False once a local reply was sent."""
        req, conn = self.req, self.conn
        cfg = conn.cfg
        url = req.url
        hmap = req.hmap
        authority = hmap.get("host")
        connection = hmap.get("connection")
        nominated = connection_nominated(connection) if connection else _NONE
        if "host" in nominated:
            authority = None  # Envoy removes it like any nominated header: 400 below
        absolute = non_relative = False
        if url[:1] != "/":
            if "://" in url:
                # absolute-form (a proxy request): its authority replaces Host. The
                # authority ends at the first "/", "?" or "#" (RFC 3986 3.2); the rest is
                # the path, which Envoy then refuses unless it starts with "/" (404
                # absolute_path_rejected: ``http://b.example?x=/y`` is not ``/y`` at
                # ``b.example?x=``)
                split = split_absolute(url)
                assert split is not None  # the decoder refused it otherwise
                authority, url = split
                absolute = True
            # not a relative path (below): an absolute-form target's path, or an OPTIONS
            # target beginning with "*", which the codec takes as it is; a CONNECT's
            # target is an authority, no path
            non_relative = url[:1] != "/" and req.method != "CONNECT"
        self.authority = authority or ""
        info = self.info
        # a request repeating a non-inline header keeps its separate values for the
        # header matchers (Envoy matches them one by one, header_matcher.py)
        hdrs = dict(hmap) if req.repeated is None else RepeatedHeaders(hmap, req.repeated)
        hdrs[":method"] = req.method
        hdrs[":path"] = url
        hdrs[":scheme"] = conn.scheme
        if authority is not None:
            hdrs[":authority"] = authority
        info.request_headers = hdrs
        if authority is None:
            return self.local_reply(400, b"", "missing_host_header", None, True)
        if non_relative:
            # ActiveStream::decodeHeaders: not a relative path, before the fragment and
            # normalization checks below: Envoy 1.40 answers ``OPTIONS *#`` and
            # ``OPTIONS *%00`` 404 absolute_path_rejected (observed,
            # test_request_targets_refused_as_by_envoy)
            conn.hcm.count("downstream_rq_non_relative_path")
            return self.local_reply(404, b"", "absolute_path_rejected")
        if "#" in url:
            # a fragment is never sent in a request target: Envoy refuses it (400
            # path_normalization_failed, checked against Envoy 1.40)
            return self.local_reply(400, b"", "path_normalization_failed", None, True)
        # the path is looked at only when it holds something normalization acts on (an
        # escape, a character Envoy escapes, a backslash, a dot segment, "//" to merge):
        # the usual path goes on as it is without a split or a call
        hcm = conn.hcm
        if hcm.rewrites_path and (path_needs_work(url) is not None
                                  or (cfg.merge_slashes and "//" in url)):
            # in Envoy's order (ConnectionManagerUtility::maybeNormalizePath): escaped
            # slashes first, then normalization, then merging slashes, so that a %2F
            # unescaped next to a "/" is merged too (/b//c/%2Fd -> /b/c/d)
            if cfg.escaped_slashes != "KEEP_UNCHANGED" and escaped_slashes(url):
                if cfg.escaped_slashes == "REJECT_REQUEST":
                    # ConnectionManagerUtility::maybeNormalizePath rejected it
                    hcm.count("downstream_rq_failed_path_normalization")
                    return self.local_reply(400, b"Bad Request", "path_normalization_failed",
                                            "DPE", True)
                url = unescape_slashes(url)
            if cfg.normalize_path and "%00" in url.partition("?")[0]:
                # an encoded NUL cannot be normalized: Envoy refuses it like a fragment
                # (400, no body, connection closed; checked against Envoy 1.40)
                hcm.count("downstream_rq_failed_path_normalization")
                return self.local_reply(400, b"", "path_normalization_failed", None, True)
            if (cfg.normalize_path or cfg.merge_slashes) and url.startswith("/"):
                normalized = normalize_path(url, cfg.merge_slashes)
                if normalized is None:
                    return self.local_reply(400, b"Bad Request", "path_normalization_failed",
                                            "DPE", True)
                url = normalized
        self.path = hdrs[":path"] = url
        connect = req.method == "CONNECT"
        if connect:
            # an HTTP/1.1 CONNECT's target is an authority, not a path: Envoy's codec sets
            # no :path (the access log prints "-"), and no path or prefix route matches it
            # (RouteMatch.connect_matcher is the only way, which remora does not take), so
            # the router answers 404 NR, before any upgrade check (checked against Envoy
            # 1.40, tests/unit/proxy/http/test_envoy_parity.py "connect")
            del hdrs[":path"]
            # and the connection closes after the answer, which says connection: close:
            # the CONNECT's request never ends on this hop (what follows its head is the
            # tunnel's), and Envoy's connection manager closes an HTTP/1 connection whose
            # stream is answered before its request ended (remoteDecodeComplete false;
            # checked against Envoy 1.40, "connect-kept")
            self.closing = True

        expect = hmap.get("expect")
        if expect is not None and expect.lower() == "100-continue":
            # Envoy answers 100-continue itself (proxy_100_continue false) and strips Expect
            cast("Http1Connection", conn).output.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        policy = hcm.request_policy
        final_remote_ip, sets = policy.mutate(
            hmap, conn.downstream.facts.remote_ip, conn.scheme, conn.node_ip)
        if final_remote_ip is not None:
            # Envoy's downstream remote address becomes the trusted XFF client (port 0)
            info.downstream_remote_address = format_address(final_remote_ip, 0)
        # removed: what the connection manager takes out of the request (also out of the
        # headers the access log and route matching see); dropped: besides, the hop-by-hop
        # headers, which are not forwarded but stay visible to both
        removed, dropped = policy.removed, policy.dropped
        if nominated:
            removed, dropped = removed | nominated, dropped | nominated
        # x-forwarded-client-cert on mutual TLS (xfcc.py): kept, appended to or set
        xfcc_in_place = False
        tls_peer = conn.downstream.facts.tls_peer
        xfcc = cfg.xfcc
        if xfcc is not None and (tls_peer is not None or xfcc.any_connection):
            removed, dropped, xfcc_in_place = mutate_xfcc(
                xfcc, tls_peer, hmap, nominated, sets, removed, dropped)
        upgrade = req.upgrade
        out = [("host", self.authority)]
        # only an edge request (use_remote_address) has set headers that may already be
        # there (x-forwarded-for, ...); otherwise they are set because they are absent
        if upgrade or xfcc_in_place or "te" in hmap or "expect" in hmap or (
                policy.use_remote_address and sets and not hmap.keys().isdisjoint(dict(sets))):
            _forward_headers(req.headers, dropped, sets, upgrade and cfg.websocket, upgrade, out)
        else:
            # the usual request: nothing kept by exception, every set header appended
            for h in req.headers:
                if h[0] not in dropped:
                    out.append(h)
            out += sets
        hdrs.update(sets)
        if absolute or hdrs.get("x-forwarded-proto") != conn.scheme:
            # :scheme as Envoy's connection manager leaves it (sent to an HTTP/2 upstream,
            # matched by routes): an absolute-form target's, else x-forwarded-proto as
            # it now is when it names http or https (any case), else the connection's
            # (ConnectionManagerUtility::mutateRequestHeaders getScheme; checked against
            # Envoy 1.40, http2/test_upstream_envoy_parity.py "scheme-*")
            hdrs[":scheme"] = request_scheme(req.url, hdrs, conn.scheme)
        if removed is policy.removed:
            if not removed.isdisjoint(hmap):  # the fixed names hold no pseudo or set header
                for n in removed.intersection(hmap):
                    del hdrs[n]
        else:
            for n in removed.intersection(hdrs):
                del hdrs[n]
        if upgrade and cfg.websocket:
            out.append(("connection", "upgrade"))
        # The body is always framed on the way up, and exactly as the forwarded head says:
        # chunked when the client sent it chunked, or when its content-length was removed
        # (nominated in Connection: Envoy then sends it chunked); an Upgrade request has
        # no body on this hop (the decoder leaves both unset).
        # The router writes that transfer-encoding itself, last: Envoy's HTTP/1 codec adds
        # it when it encodes the request, after the router's x-envoy-expected-rq-timeout-ms
        # and the route's request_headers_to_add (observed on Envoy 1.40).
        chunked = self.upstream_chunked = req.chunked or (
            req.content_length is not None and "content-length" in nominated)
        if chunked:
            self.upstream_framing = _CHUNKED
        elif (req.content_length is None and req.method not in _BODILESS_METHODS
              and not upgrade and "content-length" not in hmap):
            # A request that ends with its head and has no framing header: Envoy's
            # HTTP/1 codec writes content-length: 0 last when it encodes it, unless the
            # method is one without a body (RFC 9110 9.3: GET, HEAD, DELETE, CONNECT,
            # TRACE; observed on Envoy 1.40 for these and for POST, PUT, PATCH, OPTIONS
            # and an extension method: tests/unit/proxy/http/test_envoy_parity.py
            # "bodiless-*"). An HTTP/2 request whose HEADERS end the stream is one too.
            self.upstream_framing = _LENGTH_ZERO
        self.upstream_headers = out

        route = self.route = None if connect else cfg.route_table.route(self.authority, url,
                                                                          hdrs)
        if route is not None:
            info.route_name = route.name
            info.upstream_cluster = route.cluster
        if upgrade and not connect:
            # Only websocket upgrades are configurable (upgrade_configs); anything else, or
            # websocket without the config, is refused after routing, as Envoy does.
            self.closing = True  # after the exchange (tunnel or not) no more HTTP here
            hcm = conn.hcm
            if not (cfg.websocket and hmap.get("upgrade", "").lower() == "websocket"):
                hcm.count("downstream_rq_ws_on_non_ws_route")
                return self.local_reply(403, b"", "upgrade_failed")
            # an accepted upgrade (ConnectionManagerImpl: the upgrade filter chain was
            # created), active until its connection ends (no HTTP follows it there)
            hcm.count("downstream_cx_upgrades_total")
            hcm.stats.gauge_add(hcm.stat + "downstream_cx_upgrades_active", 1)
            cast("Http1Connection", conn).upgrades += 1
        return True

    # -- response side --------------------------------------------------------------------
    def encode_headers(self, status: int, headers: list[tuple[str, str]], *, chunked: bool,
                       service_time_ms: int | None = None,
                       tail: tuple[tuple[str, str], ...] = (),
                       mutations: HeaderMutations | None = None, joined: bool = False) -> None:
        """Write the response head downstream; CHUNKED: body is re-framed as chunks."""
        # (HTTP/1.1 alone: Http2Stream has its own encode_headers, flush and encode_end)
        h1 = cast("Http1Connection", self.conn)
        cfg = h1.cfg
        self.response_started = True
        info = self.info
        info.response_code = status
        # Envoy sets x-envoy-upstream-service-time and (OVERWRITE) server in place when the
        # upstream sent them (another sidecar did), else appends them; date only if absent.
        transformation = cfg.server_header_transformation
        overwrite = transformation == "OVERWRITE"
        server_seen = transformation == "PASS_THROUGH"  # never added then
        svc = None if service_time_ms is None else str(service_time_ms)
        hl: list[tuple[str, str]] = []
        # Envoy's mutateResponseHeaders removes upgrade unless request and response are both
        # upgrades: a 200 with ``Upgrade: h2c`` loses it, an unrequested 101 too (observed
        # on Envoy 1.40). A 101 that is one (Connection naming upgrade, and Upgrade) keeps
        # both lines as the upstream sent them, in place (``connection: Upgrade``); a 101
        # to an Upgrade request that is not one loses both, and the connection closes
        # (the router does not tunnel it: _complete)
        no_upgrade = not self.req.upgrade
        switched = status == 101 and not no_upgrade and is_upgrade_response(headers)
        if status == 101 and not switched:
            no_upgrade = True
            self.closing = True
        for h in headers:
            n = h[0]
            if n not in _RESPONSE_SPECIAL:
                hl.append(h)
                continue
            v = h[1]
            if n == "connection" and switched:
                hl.append(h)
                continue
            if n in _RESPONSE_HOP or (no_upgrade and n == "upgrade"):
                continue
            if n == "content-length" and status == 204:
                continue  # RFC 9110 8.6: never on a 204
            if n == "server":
                if server_seen and overwrite:
                    continue
                server_seen = True
                if overwrite:
                    v = cfg.server_name
            elif n == "x-envoy-upstream-service-time" and svc is not None:
                v, svc = svc, None
            hl.append((n, v))
        if svc is not None:
            hl.append(("x-envoy-upstream-service-time", svc))
        if mutations is not None and (mutations.add or mutations.remove):
            # the route's response_headers_to_add/remove, after the service time
            hl = apply_mutations(hl, mutations)
        for f in self.encoders:
            f.encode_headers(self, status, hl)
        resp = dict(hl)
        if len(resp) < len(hl):  # a name repeated
            view = repeated_response_view(hl, headers, joined)
            if isinstance(view, list):  # an inline name: joined as Envoy does
                return self.encode_headers(status, view, chunked=chunked,
                                           service_time_ms=service_time_ms, tail=tail,
                                           mutations=mutations, joined=True)
            resp = view
        if "date" not in resp:
            resp["date"] = date = http_date_text()
            hl.append(("date", date))
        if not server_seen:
            resp["server"] = cfg.server_name
            hl.append(("server", cfg.server_name))
        # (a switched 101 keeps the upstream's connection: upgrade line, above)
        if not switched and (self.closing or h1.drain_close()):
            if not self.closing:
                # closing for the drain alone: the connection may stay (Http1Connection.
                # _drain_keeps)
                h1.drain_closed = self
            self.closing = True
            hl.append(("connection", "close"))
        # the codec adds the framing last (Envoy: after connection: close)
        if chunked and status not in (204, 304):
            # a HEAD response says so too, with no body (observed on Envoy 1.40)
            self.resp_chunked = not self.head
            hl.append(("transfer-encoding", "chunked"))
        for h in tail:
            resp[h[0]] = h[1]
            hl.append(h)
        info.response_headers = resp
        # one str for the whole head, encoded once
        text = "\r\n".join(map(": ".join, hl)) + "\r\n\r\n" if hl else "\r\n"
        self.out.append(status_line(status) + text.encode("latin-1"))

    def flush(self) -> None:
        """Write what encode_* queued in one send (head and body of a small response
        usually arrive in one upstream read: one syscall instead of two)."""
        out = self.out
        if out:
            # to the connection's output: written at the end of the loop turn
            cast("Http1Connection", self.conn).output.write(
                out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def encode_data(self, data: bytes) -> None:
        if not data or self.head:
            return
        self.info.bytes_sent += len(data)
        if self.resp_chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def encode_end(self) -> None:
        out = self.out
        if self.resp_chunked:
            out.append(b"0\r\n\r\n")
        self.response_complete = True
        if out:  # flush, inlined
            cast("Http1Connection", self.conn).output.write(
                out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def encode_trailers(self, trailers: list[tuple[str, str]]) -> None:
        """End the response; HTTP/1.1 downstream drops TRAILERS and ends the chunked body,
        as Envoy's HTTP/1 codec does without http_protocol_options.enable_trailers."""
        self.encode_end()

    def local_reply(self, status: int, body: bytes, details: str, flag: str | None = None,
                    close: bool = False, headers: list[tuple[str, str]] | None = None,
                    grpc_status: int | None = None) -> bool:
        """Envoy's sendLocalReply: a text/plain answer from the proxy itself. Returns False
        (the filter chain stops). After the response started only the flag is recorded and
        the connection is closed, since the response can no longer change. GRPC_STATUS: a
        gRPC request's grpc-status when not the one STATUS maps to. A stream with a route
        gets the route's response_headers_to_add/remove on the reply, whoever answers
        (the router's failures and direct_response, a filter, the connection manager's
        timeouts: FilterManager::sendLocalReplyViaFilterChain runs the route's
        finalizeResponseHeaders on every local reply; observed on Envoy 1.40)."""
        info = self.info
        info.response_code_details = details
        if flag is not None:
            info.set_flag(flag)
        if close:
            self.closing = True
        if self.response_started:
            self.closing = True
            return False
        hs = list(headers or ())
        route = self.route
        mutations = route.response_mutations if route is not None else None
        if mutations is not None and (mutations.add or mutations.remove):
            # Envoy's encodeLocalReply runs modify_headers on the bare :status, before it
            # sets the reply's own content-length/content-type (or gRPC's headers)
            hs = apply_mutations(hs, mutations)
        if is_grpc_content_type(self.req.hmap.get("content-type")):
            # Envoy's Utility::encodeLocalReply for a gRPC request: a trailers-only
            # response, 200 with the status mapped to grpc-status and the body as
            # grpc-message (none for HEAD); the access log sees 200 (checked against
            # Envoy 1.40 over HTTP/1.1 and HTTP/2: tests/unit/proxy/
            # test_local_reply_envoy_parity.py)
            hs += [("content-type", "application/grpc"),
                   ("grpc-status", str(http_to_grpc_status(status) if grpc_status is None
                                       else grpc_status))]
            if body and not self.head:
                hs.append(("grpc-message", grpc_message(body)))
            self.encode_headers(200, hs, chunked=False, tail=self.BODILESS_TAIL)
            self.encode_end()
            return False
        if body:
            hs += [("content-length", str(len(body))), ("content-type", "text/plain")]
            self.encode_headers(status, hs, chunked=False)
        else:
            self.encode_headers(status, hs, chunked=False, tail=self.BODILESS_TAIL)
        self.encode_data(body)
        self.encode_end()
        return False

    def interrupted(self, reason: str) -> None:
        """The connection cancelled this stream: route timeout, malformed body or the
        downstream going away (the reasons Http1Connection.cancel_active gives)."""
        if reason == "timeout":
            self.local_reply(504, b"upstream request timeout", "response_timeout", "UT")
        elif reason == "stream_idle":
            self.conn.hcm.count("downstream_rq_idle_timeout")  # ActiveStream::onIdleTimeout
            # Envoy's ActiveStream::onIdleTimeout: Utility::maybeRequestTimeoutCode, 504 once
            # the request was all read (the connection stays open for the next request), else
            # 408, and the connection closes since the rest of the body will not be read
            # (observed on Envoy 1.40)
            done = self.req.complete
            self.local_reply(504 if done else 408, b"stream timeout", "stream_idle_timeout",
                             "SI", close=not done)
        elif reason == "codec":
            # a codec error in the body: ConnectionManagerImpl::onData
            self.conn.hcm.count("downstream_cx_protocol_error")
            self.local_reply(400, b"Bad Request", "http1.codec_error", "DPE", close=True)
        elif reason == "max_duration":
            # Envoy's ActiveStream::onStreamMaxDurationReached: counted in
            # http.<stat_prefix>.downstream_rq_max_duration_reached (also once the response
            # started: the stream is reset then), 504 once the request was all read, else
            # 408 (Utility::maybeRequestTimeoutCode), gRPC DEADLINE_EXCEEDED, no response
            # flag (observed on Envoy 1.40)
            self.conn.hcm.max_duration_reached.inc()
            self.local_reply(504 if self.req.complete else 408, b"downstream duration timeout",
                             "max_duration_timeout", grpc_status=4)
        else:  # "dc"; a per-try timeout never leaves the router
            self.info.set_flag("DC")
            self.info.response_code_details = "downstream_remote_disconnect"
            self.closing = True


def hcm_count(stream: Any, name: str) -> None:
    """Count http.<stat_prefix>.NAME of STREAM's connection manager (the router's
    no_route, no_cluster, rq_direct_response, rq_reset_after_downstream_response_started:
    rare paths, by name)."""
    hcm = getattr(stream.conn, "hcm", None)
    if hcm is not None:
        hcm.count(name)
