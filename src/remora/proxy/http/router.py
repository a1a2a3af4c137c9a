"""``envoy.filters.http.router``: forwards a request to its route's cluster and relays the
response, with pooling, retries, timeouts and Envoy's local replies when that fails.

Envoy reference: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter
Response bodies, flags and RESPONSE_CODE_DETAILS below were checked against Envoy 1.40
(e.g. a refused upstream: 503 UF ``upstream connect error or disconnect/reset before
headers. reset reason: remote connection failure`` with details
``upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from remora.proxy import registry
from remora.proxy.config.strict import Fields
from remora.proxy.http.codec import RESPONSE_ENDED, ResponseDecoder, ResponseError
from remora.proxy.http.codec_state import (
    CLIENT,
    END_OF_MESSAGE,
    REQUEST,
    SWITCH_UPGRADE,
    SWITCHED_PROTOCOL,
)
from remora.proxy.http.connection import BUFFER_LIMIT, Http1Connection
from remora.proxy.http.filter import HttpStream, StreamCallbacks
from remora.proxy.http.grpc_timeout import StreamDuration, format_grpc_timeout, stream_timeout_ms
from remora.proxy.http.header_map import set_first
from remora.proxy.http.header_mutation import apply_to_request
from remora.proxy.http.headers import request_uri
from remora.proxy.http.pool import PooledConnection, limits_of, pool_for
from remora.proxy.http.retry import RetryPolicy
from remora.proxy.http.route_config import Route
from remora.proxy.http.stream import (
    ActiveStream,
    hcm_count,
    host_outcome,
    is_grpc_content_type,
    is_upgrade_response,
)
from remora.proxy.http.upgrade import tunnel
from remora.proxy.http.upstream_failure import failure_answer
from remora.proxy.http.upstream_request import (
    BodySink,
    encode_request_head,
    expected_timeout_ms,
)
from remora.proxy.http2.stream import StreamConn
from remora.proxy.interfaces import Cluster, FactoryContext, HostCounts, Stats, UpstreamError
from remora.proxy.stats import Counter, Histogram, counter, histogram
from remora.proxy.upstream.auto_host import TlsOverride, tls_override
from remora.proxy.upstream.config import HttpProtocolOptions, protocol_options

ROUTER_NAME = "envoy.filters.http.router"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"


def _discard(data: bytes) -> None:
    pass


_NO_HOSTS: frozenset[str] = frozenset()
# how run() starts: fresh, or taking over a first attempt that start() began (its request
# sent on a pooled connection, or refused by the "requests" circuit breaker)
_FRESH, _SENT, _OVERFLOW = 0, 1, 2

# proxy/http2/upstream.py's forward_h2, imported by the first request that needs it (an
# import statement per request costs ~7 k instructions in CPython 3.11: the module
# spec's _initializing probe raises and discards an AttributeError each time)
_forward_h2: Any = None


class _Failure(Exception):
    """One attempt failed. KIND: connect, overflow, reset, protocol, status, per_try,
    truncated (after the response started)."""

    def __init__(self, kind: str, err: UpstreamError | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.err = err


@registry.register("http", ROUTER_NAME, ROUTER_TYPE)
def _factory(f: Fields, ctx: FactoryContext) -> Router:
    suppress = bool(f.boolean("suppress_envoy_headers", False))
    # start_child_span only shapes tracing spans; dynamic_stats only per-route stat names
    f.ignore("start_child_span", "dynamic_stats")
    f.done()
    return Router(ctx, suppress)


class ClusterStats:
    """A cluster's router stats, resolved to handles once per cluster name (not per
    request): an increment is an attribute add on the handle, no name looked up."""

    __slots__ = ("by_status", "cx_none_healthy", "plain", "prefix", "protocol_error",
                 "rq_completed", "rq_per_try_timeout", "rq_retry", "rq_retry_success",
                 "rq_time", "rq_timeout", "rq_total", "rx_bytes", "stats", "tx_bytes")

    def __init__(self, stats: Stats, cluster_name: str) -> None:
        p = self.prefix = f"cluster.{cluster_name}."
        self.stats = stats
        self.rq_total = counter(stats, p + "upstream_rq_total")
        self.tx_bytes = counter(stats, p + "upstream_cx_tx_bytes_total")
        self.rx_bytes = counter(stats, p + "upstream_cx_rx_bytes_total")
        self.rq_retry = counter(stats, p + "upstream_rq_retry")
        self.rq_retry_success = counter(stats, p + "upstream_rq_retry_success")
        self.rq_completed = counter(stats, p + "upstream_rq_completed")
        self.rq_time = histogram(stats, p + "upstream_rq_time")
        self.rq_timeout = counter(stats, p + "upstream_rq_timeout")
        self.rq_per_try_timeout = counter(stats, p + "upstream_rq_per_try_timeout")
        self.protocol_error = counter(stats, p + "upstream_cx_protocol_error")
        self.cx_none_healthy = counter(stats, p + "upstream_cx_none_healthy")
        # StatsStore's own histogram: a request's upstream_rq_time is recorded in place
        # (what Histogram.observe does); counters take ``pending += n`` on any handle
        self.plain = type(self.rq_time) is Histogram
        # status -> its upstream_rq_Nxx, upstream_rq_NNN and upstream_rq_completed,
        # filled as statuses are seen
        self.by_status: dict[int, _StatusCounters] = {}

    def status(self, status: int) -> _StatusCounters:
        handles = self.by_status.get(status)
        if handles is None:
            p = self.prefix
            handles = self.by_status[status] = _StatusCounters(
                counter(self.stats, f"{p}upstream_rq_{status // 100}xx"),
                counter(self.stats, f"{p}upstream_rq_{status}"), self.rq_completed,
                self.rq_time)
        return handles

    def count_protocol_error(self) -> None:
        """A pooled connection's stray bytes (bound per connection, not per request)."""
        self.protocol_error.inc()


class _StatusCounters:
    """The three counters a response (or an abort charged like one) increments, as one
    call: Envoy's chargeUpstreamCode counts upstream_rq_Nxx, upstream_rq_NNN and
    upstream_rq_completed together (and a response's upstream_rq_time: ``response``)."""

    __slots__ = ("_plain", "code", "completed", "rq_time", "xx")

    def __init__(self, xx: Counter, code: Counter, completed: Counter,
                 rq_time: Histogram) -> None:
        self.xx, self.code, self.completed = xx, code, completed
        self.rq_time = rq_time
        # StatsStore's own histogram is recorded in place (what Histogram.observe does);
        # a counter handle of any kind takes ``pending += n`` (stats.Counter)
        self._plain = type(rq_time) is Histogram

    def response(self, ms: float) -> None:
        """``inc``, and the response's upstream_rq_time (MS), in one call (one call less
        per request than inc and observe)."""
        self.xx.pending += 1
        self.code.pending += 1
        self.completed.pending += 1
        if self._plain:
            pending = self.rq_time.pending  # Histogram.observe, inlined
            pending.append(ms)
            if len(pending) >= Histogram.FOLD_AT:
                self.rq_time.fold()
        else:
            self.rq_time.observe(ms)

    def inc(self) -> None:
        self.xx.pending += 1
        self.code.pending += 1
        self.completed.pending += 1


class _ClusterEntry:
    """One cluster object as the router sees it per request: its stats handles, its HTTP
    protocol options (whether requests go upstream as HTTP/2: never, always, or when the
    downstream's was) and its pool limits."""

    __slots__ = ("auto_tls", "cluster", "cs", "h2_after_h1", "h2_after_h2", "limits", "opts",
                 "slow_after_h1", "slow_after_h2")

    def __init__(self, cluster: Cluster, cs: ClusterStats) -> None:
        self.cluster = cluster
        self.cs = cs
        opts = self.opts = protocol_options(cluster)
        # upstream_http2 by downstream protocol: HTTP/2, or anything else
        self.h2_after_h2 = opts is not None and opts.upstream_http2("HTTP/2")
        self.h2_after_h1 = opts is not None and opts.upstream_http2("HTTP/1.1")
        self.limits = limits_of(cluster)
        # auto_sni / auto_san_validation: each request's host picks its upstream TLS name
        # and its connections (upstream/auto_host.py); such a request takes ``run``
        self.auto_tls = opts if opts is not None and (
            opts.auto_sni or opts.auto_san_validation) else None
        # what keeps a request off ``start``'s pooled fast path, by downstream protocol
        self.slow_after_h2 = self.h2_after_h2 or self.auto_tls is not None
        self.slow_after_h1 = self.h2_after_h1 or self.auto_tls is not None


class Router:
    terminal = True

    def __init__(self, ctx: FactoryContext, suppress_envoy_headers: bool = False) -> None:
        self.cluster_manager = ctx.cluster_manager
        self.stats = ctx.stats
        self.suppress = suppress_envoy_headers
        self.pool = pool_for(self.cluster_manager)
        self._cluster_stats: dict[str, ClusterStats] = {}
        self._entries: dict[str, _ClusterEntry] = {}

    def protocol_options(self, cluster: Cluster) -> HttpProtocolOptions | None:
        """CLUSTER's HTTP protocol options, looked up once per cluster object (a CDS update
        replaces the object, and with it the entry)."""
        return self.entry(cluster).opts

    def entry(self, cluster: Cluster) -> _ClusterEntry:
        """What a request needs of CLUSTER that depends on its config alone, worked out
        once per cluster object (a CDS update replaces the object, and with it the
        entry)."""
        entry = self._entries.get(cluster.name)
        if entry is None or entry.cluster is not cluster:
            entry = self._entries[cluster.name] = _ClusterEntry(
                cluster, self.cluster_stats(cluster.name))
        return entry

    def cluster_stats(self, name: str) -> ClusterStats:
        cs = self._cluster_stats.get(name)
        if cs is None:
            cs = self._cluster_stats[name] = ClusterStats(self.stats, name)
        return cs

    def decode_headers(self, stream: HttpStream) -> Coroutine[Any, Any, bool]:
        """The filter's decode_headers (HttpFilter): a coroutine, the request's
        ``_Forward.run`` itself when it goes upstream (one coroutine less per request)."""
        route = stream.route
        # the router's no_route, rq_direct_response and no_cluster (Router::Filter::
        # decodeHeaders), in http.<stat_prefix>.
        if route is None:
            hcm_count(stream, "no_route")
            return _answered(stream.local_reply(404, b"", "route_not_found", "NR"))
        if route.direct_response is not None:
            hcm_count(stream, "rq_direct_response")
            status, body = route.direct_response
            return _answered(stream.local_reply(status, body, "direct_response",
                                                headers=_direct_location(stream, status)))
        assert route.cluster is not None
        cluster = self.cluster_manager.get(route.cluster)
        if cluster is None:
            hcm_count(stream, "no_cluster")
            return _answered(stream.local_reply(503, b"", "cluster_not_found", "NC"))
        return _Forward(self, stream, route, cluster).run()

    def start_http1(self, stream: ActiveStream) -> Coroutine[Any, Any, bool] | None:
        """``decode_headers`` for an HTTP/1.1 or HTTP/2 stream whose chain is the router
        alone, from the connection's read callback (hcm.start): the usual request (whole,
        on a pooled connection) goes upstream without a coroutine and returns None, its
        response ends the stream from the upstream's read callback (``_Forward.start``);
        anything else returns the coroutine ``decode_headers`` would."""
        route = stream.route
        if route is None or route.direct_response is not None:
            return self.decode_headers(stream)
        cluster = self.cluster_manager.get(route.cluster)  # type: ignore[arg-type]
        if cluster is None:
            hcm_count(stream, "no_cluster")
            return _answered(stream.local_reply(503, b"", "cluster_not_found", "NC"))
        return _Forward(self, stream, route, cluster).start()


async def _answered(result: bool) -> bool:
    return result


def _direct_location(stream: HttpStream, status: int) -> list[tuple[str, str]] | None:
    """A 201 or 3xx direct_response's location: the request's own URL (Envoy's router,
    Filter::decodeHeaders, adds newUri(request) for these, RFC 7231 7.1.2; before the
    route's response_headers_to_add; checked against Envoy 1.40)."""
    if status != 201 and not 300 <= status <= 399:
        return None
    hdrs = stream.info.request_headers or {}
    # an HTTP/2 client's own :scheme; an HTTP/1.1 request's, as the stream worked it out
    # (headers.request_scheme) and keeps it
    uri = request_uri(stream.req.scheme or hdrs.get(":scheme", "http"), hdrs)
    return None if uri is None else [("location", uri)]


class _Forward:
    """One request's trip upstream: attempts, retries, and the final outcome. While an
    attempt waits for its response, this object is the upstream connection's
    ``ResponseHandler``: each read is decoded and relayed downstream in the read callback
    (one flush per read), and the attempt awaits one future, resolved when the response
    is complete or the attempt failed (on an HTTP/1.1 downstream the connection resumes
    the attempt right there, connection.py)."""

    __slots__ = ("cluster", "conn", "cs", "current", "dec", "done", "duration", "entry",
                 "grpc_deferred", "h1", "host", "hs", "policy", "retries_left", "retry_slots",
                 "retry_status", "route", "router", "started", "stream",
                 "target", "tls", "tried")

    # the hosts tried so far (retry previous_hosts): set by ``run``, which every attempt
    # but the one ``start`` begins goes through (``start`` records its host in ``host``;
    # one set built and filled less per usual request)
    tried: set[str]

    def __init__(self, router: Router, stream: HttpStream, route: Route,
                 cluster: Cluster) -> None:
        self.router = router
        self.stream = stream
        conn: StreamCallbacks = stream.conn
        self.conn = conn
        # an HTTP/1.1 connection and an HTTP/2 stream drive the stream from their
        # callbacks (connection.py, http2/stream.py): the response wait is announced to
        # them, and resumed by them
        # (narrowed from object, not from the StreamCallbacks Protocol: mypy narrows that
        # to "<subclass of Http1Connection and StreamCallbacks>", which mypyc checks as an
        # Http1Connection, and a StreamConn failed the check when compiled)
        any_conn: object = conn
        self.h1: Http1Connection | StreamConn | None = (
            any_conn if type(any_conn) is Http1Connection
            or isinstance(any_conn, (Http1Connection, StreamConn)) else None)
        self.route = route
        self.cluster = cluster
        p: RetryPolicy | None = route.retry_policy
        self.policy = p
        self.retries_left = p.num_retries if p is not None else 0
        self.retry_slots = 0  # "retries" circuit-breaker slots held
        self.current: PooledConnection | None = None
        self.host: str | None = None  # the current (or last) attempt's host, for its stats
        # the load balancer's pick ``start`` made for the first attempt when it found no
        # idle connection to that host: ``_attempt`` uses it instead of picking again
        self.target: tuple[str, int] | None = None
        self.hs: HostCounts | None = None  # its stats, once a request is attached to it
        self.retry_status = 0
        # a gRPC response whose host stat waits for its end (Envoy's
        # grpc_rq_success_deferred_): charged rq_error then, as no trailers come over
        # HTTP/1.1; nothing when the stream is cut short (observed on Envoy 1.40)
        self.grpc_deferred = False
        self.started = time.monotonic()
        entry = router._entries.get(cluster.name)  # router.entry, its usual hit inlined
        if entry is None or entry.cluster is not cluster:
            entry = router.entry(cluster)
        self.entry = entry
        self.cs = entry.cs
        # the request's upstream TLS name (auto_sni / auto_san_validation), per attempt
        self.tls: TlsOverride | None = None
        self.dec: ResponseDecoder | None = None
        self.done: asyncio.Future[_Failure | str | None] | None = None
        # the stream's max duration in seconds (None: none): routes with
        # max_stream_duration only. Istio writes it on every route, with no limit of its
        # own: only a request with grpc-timeout then has one (one membership test)
        sd = route.stream_duration
        self.duration: float | None = (
            None if sd is None or (not sd.max_stream_duration
                                   and "grpc-timeout" not in stream.req.hmap)
            else self._stream_duration(sd))

    def _stream_duration(self, d: StreamDuration) -> float | None:
        """Envoy's ActiveStream::refreshDurationTimeout for this stream: its max duration
        (grpc_timeout.stream_timeout_ms), and for a gRPC request with one the grpc-timeout
        header rewritten to it, as Envoy sends it upstream (``1S`` becomes ``1000m``)."""
        stream = self.stream
        hmap = stream.req.hmap
        ms = stream_timeout_ms(d, hmap.get("grpc-timeout"))
        if ms is None:
            return None
        if is_grpc_content_type(hmap.get("content-type")):
            value = format_grpc_timeout(ms)
            if "grpc-timeout" in hmap:
                set_first(stream.upstream_headers, "grpc-timeout", value)
            else:  # the route's own duration: Envoy's toGrpcTimeout sets the header
                stream.upstream_headers.append(("grpc-timeout", value))
        return ms / 1000

    @property
    def reselections(self) -> int:
        """The policy's host_selection_retry_max_attempts (1 without a policy)."""
        p = self.policy
        return p.host_selection_retry_max_attempts if p is not None else 1

    # -- the loop -------------------------------------------------------------------------
    async def run(self, resumed: int = _FRESH) -> bool:
        """Forward the request; False, as a filter that answered (the router always does).
        RESUMED: the first attempt was begun by ``start`` (its request sent: _SENT, or
        refused by the "requests" circuit breaker: _OVERFLOW), and this coroutine takes
        it over where the attempt waits for its outcome."""
        host = self.host
        self.tried = {host} if resumed == _SENT and host is not None else set()
        conn = self.conn
        loop = conn.loop
        timeout = self.route.timeout
        # the route timeout (Envoy's response timeout) runs from here to the end of the
        # last attempt; an HTTP/1.1 connection keeps one lazily re-armed deadline timer for
        # its streams (they are served one at a time) instead of a timer per request, and an
        # HTTP/2 connection one for all its streams' deadlines (Http2Connection)
        timer: asyncio.TimerHandle | None = None
        h1 = self.h1
        if timeout > 0 and not resumed:  # start armed it
            if h1 is not None:
                h1.arm_route_timeout(timeout)
            else:
                timer = loop.call_later(timeout, conn.cancel_active, "timeout")
        # the stream's max duration spans every attempt and the back-offs between them
        dtimer = (loop.call_later(self.duration, conn.cancel_active, "max_duration")
                  if self.duration is not None else None)
        exclude = _NO_HOSTS
        try:
            while True:
                per_try = self.policy.per_try_timeout if self.policy is not None else 0.0
                # held for this attempt; released when it ends (a resumed first attempt
                # began holding none: retry slots it took since are the next attempt's)
                slots = self.retry_slots if not resumed else 0
                try_timer = (loop.call_later(per_try, self._per_try_expired)
                             if per_try > 0 and not resumed else None)
                try:
                    if resumed == _OVERFLOW:
                        resumed = _FRESH
                        raise _Failure("connect", UpstreamError("UO", ""))
                    begun, resumed = resumed, _FRESH
                    await self._attempt(exclude, begun)
                    return False
                except _Failure as f:
                    failure = f
                except asyncio.CancelledError:
                    reason = conn.take_cancel()
                    if reason is None:
                        raise
                    if reason != "per_try":
                        self._drop_current()
                        self._interrupted(reason, in_flight=True)
                        return False
                    failure = _Failure("per_try")
                finally:
                    if try_timer is not None:
                        try_timer.cancel()
                    if self.current is not None or self.stream.req.sink is not None:
                        self._drop_current()  # nothing to drop after a usual response
                    if slots:
                        for _ in range(slots):
                            self.cluster.release("retries")
                        self.retry_slots -= slots
                if failure.kind == "per_try":
                    # every per-try timeout, retried or not (Envoy's onPerTryTimeoutCommon)
                    self._charge("rq_timeout")
                    self.cs.rq_per_try_timeout.inc()
                if failure.kind == "status" or self._may_retry(failure.kind):
                    if failure.kind != "status":  # a retried status was charged already
                        self._charge("rq_error")  # as Envoy's Filter::maybeRetryReset
                    self.cs.rq_retry.inc()
                    # RetryStateImpl::enableBackoffTimer: the exponential back-off (remora
                    # has no rate-limited one) schedules every retry
                    self.cs.stats.inc(self.cs.prefix + "upstream_rq_retry_backoff_exponential")
                    if self.policy is not None and self.policy.previous_hosts:
                        exclude = frozenset(self.tried)
                    n = (self.policy.num_retries if self.policy else 1) - self.retries_left
                    await asyncio.sleep(self.policy.backoff(n) if self.policy else 0)
                    continue
                if failure.kind in ("connect", "reset", "protocol", "per_try") and not (
                        failure.err is not None and failure.err.flag == "UH"):
                    # the attempt's outcome went through Envoy's shouldRetryReset (a host
                    # that could not be picked does not: sendNoHealthyUpstreamResponse)
                    self._retry_success(self._wants(failure.kind))
                self._fail(failure)
                return False
        except asyncio.CancelledError:
            reason = conn.take_cancel()
            if reason is None:
                raise
            self._drop_current()
            self._interrupted(reason, in_flight=False)  # between attempts (backoff)
            return False
        finally:
            if dtimer is not None:
                dtimer.cancel()
            if timer is not None:
                timer.cancel()
            elif h1 is not None:
                h1.route_deadline = 0.0
            if self.retry_slots:
                for _ in range(self.retry_slots):
                    self.cluster.release("retries")
                self.retry_slots = 0

    def _per_try_expired(self) -> None:
        """Envoy's UpstreamRequest::onPerTryTimeout: ignored once the response started
        downstream (it then goes on up to the route timeout: a gRPC server stream longer
        than the per-try timeout is not cut off)."""
        if not self.stream.response_started:
            self.conn.cancel_active("per_try")

    def _wants(self, kind: str) -> bool:
        """Whether the policy would retry an attempt that failed with KIND."""
        p = self.policy
        if p is None or self.stream.response_started:
            return False
        if kind == "connect":
            return p.retry_on_connect_failure()
        if kind in ("reset", "protocol"):
            return p.retry_on_reset(True)
        if kind == "per_try":
            # a per-try timeout resets the attempt (LocalReset): RetryStateImpl::
            # wouldRetryFromReset retries it under reset, 5xx and gateway-error
            on = p.retry_on
            return "reset" in on or "5xx" in on or "gateway-error" in on
        return False

    def _may_retry(self, kind: str) -> bool:
        """Whether the policy retries KIND now; takes a "retries" circuit-breaker slot."""
        return self._wants(kind) and self._take_retry()

    def _retry_success(self, wanted: bool) -> None:
        """Envoy's RetryStateImpl::shouldRetry counts upstream_rq_retry_success when a
        request that was retried ends an attempt with an outcome its policy would not
        retry (WANTED false), whatever that outcome is: a 500 after a retried 503 under
        retriable-status-codes 503 counts, running out of retries does not (the rule
        http2/upstream.py follows, checked side by side with Envoy 1.40)."""
        if self.stream.info.upstream_request_attempt_count > 1 and not wanted:
            self.cs.rq_retry_success.inc()

    def _count_abort(self, status: int) -> None:
        """A local reply in place of the upstream's response, charged to the cluster like
        one (Envoy's chargeUpstreamAbort -> chargeUpstreamCode: upstream_rq_NNN, _Nxx and
        _completed; no upstream_rq_time)."""
        self.cs.status(status).inc()

    def _take_retry(self) -> bool:
        if self.retries_left <= 0:
            if self.policy is not None and self.policy.num_retries > 0:
                self.stream.info.set_flag("URX")  # the retry limit was reached
                # RetryStateImpl::shouldRetry's NoRetryLimitExceeded, counted by the router
                cs = self.cs
                cs.stats.inc(cs.prefix + "upstream_rq_retry_limit_exceeded")
            return False
        if not self.stream.req.retain:
            return False  # the body outgrew the buffer: nothing to resend
        if not self.cluster.try_acquire("retries"):
            return False
        self.retries_left -= 1
        self.retry_slots += 1
        return True

    # -- one attempt ----------------------------------------------------------------------
    async def _attempt(self, exclude: frozenset[str], begun: int = _FRESH) -> None:
        stream, cluster, router = self.stream, self.cluster, self.router
        info = stream.info
        if begun:  # start sent the request on a pooled connection: wait for its outcome
            attached = self.hs
            try:
                pc = self.current
                dec = self.dec
                assert pc is not None and dec is not None
                done = self.done = self.conn.loop.create_future()
                h1 = self.h1
                if h1 is not None:
                    h1.response_wait = done
                outcome = await done
                if outcome is not None:
                    if isinstance(outcome, _Failure):
                        raise outcome
                    raise AssertionError(outcome)  # start sends no upgrade request
            finally:
                self._attempt_over(attached)
            return
        info.upstream_request_attempt_count += 1
        self.retry_status = 0
        self.host = None
        self.hs = None
        attached = None  # the host stats whose rq_active this attempt holds
        if not cluster.try_acquire("requests"):
            raise _Failure("connect", UpstreamError("UO", ""))
        try:
            entry = self.entry
            auto = entry.auto_tls
            ov = None
            if auto is not None:
                # Envoy's router: the host as the request goes upstream (router.cc
                # decodeHeaders), its connections a pool of their own (auto_host.py)
                ov = self.tls = tls_override(auto, stream.authority, stream.req.hmap)
            if entry.h2_after_h2 if info.protocol == "HTTP/2" else entry.h2_after_h1:
                # proxy/http2's pool (which asks for the task itself to connect)
                # the HTTP/2 stack is imported by the first request that needs it, not
                # at start-up (proxy/http2/codec_choice.py says why)
                global _forward_h2
                forward_h2 = _forward_h2
                if forward_h2 is None:
                    # an alias: mypyc cannot compile an import that rebinds a local
                    from remora.proxy.http2.upstream import forward_h2 as imported
                    forward_h2 = _forward_h2 = imported
                await forward_h2(self, exclude, _Failure)
                return
            facts = self.conn.downstream.facts
            # the host first, then a connection to it (Envoy's router: chooseHost, then that
            # host's pool), so kept-alive connections do not bypass the load balancer
            target = self.target
            if target is None:
                target = cluster.choose(facts, exclude, self.reselections)
                if target is None:
                    self.cs.cx_none_healthy.inc()  # Envoy's router counts it on no host
                    info.upstream_cluster = cluster.name
                    raise _Failure("connect", UpstreamError("UH", ""))
            else:
                self.target = None  # the first attempt's only
            src = facts.original_src  # pool.pool_key, inlined
            key = (cluster.name if ov is None else cluster.name + ov.key, target[0],
                   target[1], src.ip if src is not None else None)
            # the first attempt's start is the request's time (one clock read less)
            pc = router.pool.acquire(key, exclude, cluster,
                                     self.started if info.upstream_request_attempt_count == 1
                                     else time.monotonic())
            fresh = pc is None
            if pc is None:
                if not cluster.try_acquire("pending_requests"):
                    raise _Failure("connect", UpstreamError("UO", ""))
                # a request that waits for a new connection (the pool's newPendingStream)
                self.cs.stats.inc(self.cs.prefix + "upstream_rq_pending_total")
                if self.h1 is not None:  # connecting needs the task (asyncio.timeout)
                    await self.h1.in_task()
                try:
                    # previous_hosts: the cluster re-picks an excluded host up to
                    # host_selection_retry_max_attempts times, then uses its last pick, so
                    # ruling out every host retries one already tried (UH only when no
                    # host is healthy, counted once by the cluster)
                    up = await (cluster.connect(
                        facts, info, exclude,
                        host_selection_retry_max_attempts=self.reselections,
                        target=target) if ov is None
                        else cluster.connect(
                            facts, info, exclude,
                            host_selection_retry_max_attempts=self.reselections,
                            tls_override=ov, target=target))
                except UpstreamError as err:
                    if err.host:
                        self.tried.add(err.host)
                        self.host = err.host
                    raise _Failure("connect", err) from None
                finally:
                    cluster.release("pending_requests")
                # the pool counts stray bytes on it; bound to the cluster's stats only, so
                # a pooled connection keeps nothing of this request alive
                self.cs.stats.inc(self.cs.prefix + "upstream_cx_http1_total")
                pc = PooledConnection(key, up, entry.limits, cluster,
                                      self.cs.count_protocol_error)
                pc.take_over(self.cs.tx_bytes, self.cs.rx_bytes)
                router.pool.track(pc)
            else:
                info.upstream_host = pc.host
                info.upstream_local_address = pc.upstream.local_address
            info.upstream_cluster = cluster.name
            self.current = pc
            host = pc.host
            self.tried.add(host)
            self.cs.rq_total.inc()
            self.host = host
            hs = self.hs = attached = cluster.host_counts(host)
            hs.rq_total += 1
            hs.rq_active += 1
            if not stream.req.complete and self.conn.body_error():
                # The body was malformed in the same read as its headers: Envoy answers 400
                # DPE. It has picked the host by then; a pooled connection is attached at
                # once, a new one is still connecting, so UPSTREAM_LOCAL_ADDRESS is logged
                # only in the first case (observed on Envoy 1.40).
                if fresh:
                    info.upstream_local_address = None
                raise _Failure("codec")
            self._send_request(pc)
            # the response is decoded in pc's read callbacks (upstream_data/upstream_eof);
            # the attempt waits once for its outcome. One decoder per pooled connection,
            # reset for each response it carries
            dec = self._attach_decoder(pc)
            done = self.done = self.conn.loop.create_future()
            h1 = self.h1
            if h1 is not None:
                h1.response_wait = done
            if pc._pending or pc._eof:
                pc.attach(self)  # held bytes or the end are read first
            else:
                pc.handler = self  # attach, for a connection with nothing held
            outcome = await done
            if outcome is not None:
                if isinstance(outcome, _Failure):
                    raise outcome
                self.current = None  # "upgrade": the tunnel owns and closes it
                assert isinstance(stream, ActiveStream)  # only HTTP/1.1 upgrades
                if h1 is not None:
                    await h1.in_task()
                await tunnel(stream, pc, dec)
        finally:
            self._attempt_over(attached)

    def _attempt_over(self, attached: HostCounts | None) -> None:
        """An attempt's end, however it ended: its response decoder and wait go, the
        cluster's request slot goes back, and ATTACHED (the host stats it counted in)
        one active request less. ``_end_started`` does the same inline for the usual
        response (no call on that path)."""
        self.dec = None
        self.done = None
        self.cluster.release("requests")
        if attached is not None and attached.rq_active > 0:
            attached.rq_active -= 1

    def start(self) -> Coroutine[Any, Any, bool] | None:
        """``run`` without a coroutine for the usual request (HTTP/1.1, or an HTTP/2
        stream: ``StreamConn`` holds it in flight too): whole (no body to stream, no
        upgrade), HTTP/1.1 upstream, no per-try timeout, and an idle pooled
        connection that ``acquire`` takes as it is. Then the first attempt is begun here
        exactly as ``run`` and ``_attempt`` begin it (route timeout, attempt count,
        circuit breaker, host stats, the request written, this object the connection's
        response handler) and None is returned: the connection holds the stream as in
        flight (``Http1Connection.in_flight``) and the response's last read ends it
        (``_end_started``). Whatever else happens to the attempt (a failure, a retried
        status, a timeout, the client gone) hands it to ``run(resumed)`` where it waits
        for its outcome, so those paths are the coroutine's own. Otherwise returns
        ``run()``."""
        h1 = self.h1
        stream = self.stream
        req = stream.req
        p = self.policy
        # (an HTTP/1.1 connection and an HTTP/2 stream both hold a request in flight:
        # http/connection.py and http2/stream.py ``in_flight``)
        if (h1 is None or not req.complete or req.upgrade or stream.upstream_chunked
                or (self.entry.slow_after_h2 if stream.info.protocol == "HTTP/2"
                    else self.entry.slow_after_h1)
                or (p is not None and p.per_try_timeout > 0) or self.duration is not None
                or stream.info.upstream_request_attempt_count):
            return self.run()
        facts = h1.downstream.facts
        cluster = self.cluster
        # the load balancer's pick for this request, then an idle connection to that host
        # (Envoy's router: chooseHost, then the host's pool); a one-host cluster answers
        # from a field (ClusterImpl.choose)
        target = cluster.choose(facts, _NO_HOSTS,
                                p.host_selection_retry_max_attempts if p is not None else 1)
        if target is None:
            return self.run()  # no healthy host: _attempt answers UH
        src = facts.original_src  # pool.pool_key, inlined
        key = (cluster.name, target[0], target[1], src.ip if src is not None else None)
        pool = self.router.pool
        pc = pool.take_ready(key, cluster, self.started)
        if pc is None:
            self.target = target  # the first attempt connects to it
            return self.run()
        route = self.route
        timeout = route.timeout
        if timeout > 0:
            h1.arm_route_timeout(timeout)
        info = stream.info
        info.upstream_request_attempt_count = 1
        if not cluster.try_acquire("requests"):
            pool.put_back(pc)  # acquired after the circuit breaker in _attempt
            return self.run(_OVERFLOW)
        info.upstream_host = host = pc.host
        info.upstream_local_address = pc.upstream.local_address
        info.upstream_cluster = cluster.name
        self.current = pc
        cs = self.cs
        cs.rq_total.pending += 1  # Counter.inc without the call (any handle takes it)
        self.host = host  # run(_SENT) starts its tried hosts with it
        hs = pc.host_counts
        if hs is None:  # the host's stats, kept on its connection (no call per request)
            hs = pc.host_counts = cluster.host_counts(host)
        self.hs = hs
        hs.rq_total += 1
        hs.rq_active += 1
        # the request, as _send_request sends it, without its branches for anything but
        # the first attempt of a whole request, no upgrade, framed as the client framed it
        # (ruled out above): 14 lines less per request; this and _attach_decoder below
        # inlined saved ~0.9 k instructions per request (callgrind bench_http_cpu.py)
        headers = stream.upstream_headers
        mutations = route.request_mutations
        # the first attempt's x-envoy-expected-rq-timeout-ms depends on the route alone
        extra = None if self.router.suppress else route.expected_timeout_header
        if mutations.add or mutations.remove:
            headers, extra = self._mutated(headers, extra), None
        pc.state.process_whole_request()  # REQUEST and END_OF_MESSAGE, written at once
        head = encode_request_head(stream.method, stream.path, headers, extra,
                                   stream.upstream_framing)
        body = req.body
        data = head + b"".join(body) if body else head
        out = pc.output  # pc.write, inlined
        if out is not None:
            out.write(data)
        else:
            pc.write(data)
        # _attach_decoder, inlined (a call less per request)
        dec = pc.decoder
        if dec is not None and dec.parser_idle:
            dec.reset(stream.head, self._on_headers, stream.encode_data)
        else:
            dec = pc.decoder = ResponseDecoder(stream.head, self._on_headers,
                                               stream.encode_data, state=pc.state)
        self.dec = dec
        h1.in_flight = self
        pc.handler = self  # take_ready(): nothing held, no end read
        return None

    def resumed(self) -> Coroutine[Any, Any, bool]:
        """The coroutine that takes over the attempt ``start`` began, at its wait."""
        return self.run(_SENT)

    def _end_started(self) -> None:
        """The usual response of a request ``start`` sent is complete: what ``_attempt``
        and ``run`` do after their wait returned None, then the stream ends. (``_complete``
        has its own copy, for the usual response.)"""
        self.dec = None
        self.cluster.release("requests")
        hs = self.hs
        if hs is not None and hs.rq_active > 0:
            hs.rq_active -= 1
        if self.current is not None or self.stream.req.sink is not None:
            self._drop_current()
        if self.retry_slots:
            for _ in range(self.retry_slots):
                self.cluster.release("retries")
            self.retry_slots = 0
        h1 = self.h1
        assert h1 is not None
        h1.route_deadline = 0.0
        h1.in_flight_ended()

    def _attach_decoder(self, pc: PooledConnection) -> ResponseDecoder:
        """PC's response decoder for this request: one per pooled connection, reset for
        each response it carries (a new one when the last left the parser mid-message).
        ``start`` has its own copy (no call on the usual request's path)."""
        stream = self.stream
        dec = pc.decoder
        if dec is not None and dec.parser_idle:
            dec.reset(stream.head, self._on_headers, stream.encode_data)
        else:
            dec = pc.decoder = ResponseDecoder(stream.head, self._on_headers,
                                               stream.encode_data, state=pc.state)
        self.dec = dec
        return dec

    def _mutated(self, headers: list[tuple[str, str]],
                 extra: tuple[str, str] | None) -> list[tuple[str, str]]:
        """HEADERS and the router's EXTRA header (x-envoy-expected-rq-timeout-ms) with
        the route's request_headers_to_add/remove applied after them, and the access
        log's view of the request (REQ()) changed the same way. Envoy's router sets the
        timeout header (FilterUtility::setTimeoutHeaders) before the route's
        finalizeRequestHeaders adds the route's and virtual host's headers, so those come
        after it upstream (checked against Envoy 1.40)."""
        if extra is not None:
            headers = [*headers, extra]
        # REQ() in the access log sees the mutated request
        return apply_to_request(headers, self.route.request_mutations,
                                self.stream.info.request_headers)

    def _send_request(self, pc: PooledConnection) -> None:
        stream, req = self.stream, self.stream.req
        extra: tuple[str, str] | None = None
        route = self.route
        if not self.router.suppress:
            if stream.info.upstream_request_attempt_count > 1:
                elapsed = int((time.monotonic() - self.started) * 1000)
                per_try = self.policy.per_try_timeout if self.policy is not None else 0.0
                expected = expected_timeout_ms(route.timeout, per_try, elapsed)
                if expected:
                    extra = ("x-envoy-expected-rq-timeout-ms", str(expected))
            else:  # the first attempt's value depends on the route alone
                extra = route.expected_timeout_header
        headers = stream.upstream_headers
        mutations = route.request_mutations
        if mutations.add or mutations.remove:
            headers, extra = self._mutated(headers, extra), None
        state = pc.state
        whole = req.complete and not stream.upstream_chunked
        if req.upgrade:
            # the upstream may switch protocols; either way no next request follows
            state.process_event(CLIENT, REQUEST, SWITCH_UPGRADE)
            state.process_keep_alive_disabled()
            if whole:
                state.process_event(CLIENT, END_OF_MESSAGE)
        elif whole:
            state.process_whole_request()  # REQUEST and END_OF_MESSAGE, written at once
        else:
            state.process_event(CLIENT, REQUEST)
        # the codec's framing goes after the router's own header, as Envoy's HTTP/1
        # codec writes it when it encodes the request (observed on Envoy 1.40)
        head = encode_request_head(stream.method, stream.path, headers, extra,
                                   stream.upstream_framing)
        if whole:
            # the common case: the whole request in one write, no body sink
            body = req.body
            out = pc.output  # pc.write, inlined
            data = head + b"".join(body) if body else head
            if out is not None:
                out.write(data)
            else:
                pc.write(data)
            return
        pc.write(head)
        # the body is framed as the forwarded head says (stream.upstream_chunked), which
        # is not always how the client framed it (a nominated content-length)
        sink = BodySink(pc, stream.upstream_chunked)
        for chunk in req.body:
            sink.data(chunk)
        if req.complete:
            sink.end()
        else:
            # without a retry policy nothing is ever resent: keep no copy of the body
            req.attach(sink, BUFFER_LIMIT if self.policy is not None else -1)
            self.conn.resume_reading()

    # -- the upstream connection's reads (pool.ResponseHandler) -----------------------------
    def upstream_data(self, data: bytes) -> None:
        conn = self.conn
        conn.last_activity = conn.loop.time()
        dec = self.dec
        assert dec is not None
        stream = self.stream
        try:
            dec.feed(data)
        except ResponseError:
            stream.flush()
            self.cs.protocol_error.inc()
            self._finish(_Failure("truncated" if dec.headers_done else "protocol"))
            return
        if self.retry_status:
            self._finish(_Failure("status"))
            return
        if dec.state.server in RESPONSE_ENDED:  # dec.complete, inlined
            self._complete(dec)
            return
        stream.flush()
        if conn.write_paused:
            # the client reads slower than the upstream sends: stop reading the upstream
            # until the downstream drained (Envoy's watermark-based flow control)
            pc = self.current
            if pc is not None:
                pc.pause_reading()
                conn.when_writable(pc.resume_reading)

    def upstream_eof(self) -> None:
        conn = self.conn
        conn.last_activity = conn.loop.time()
        dec = self.dec
        assert dec is not None
        if dec.eof_completes():
            dec.end_at_eof()
            self._complete(dec)
            return
        self.stream.flush()
        if dec.headers_done:
            self._finish(_Failure("truncated"))
        elif dec.head_started:
            # part of a head, then the end: Envoy's parser fails on it, a protocol error
            # (502 UPE upstream_reset_before_response_started{protocol_error}, observed on
            # Envoy 1.40), not the connection's termination
            self.cs.protocol_error.inc()
            self._finish(_Failure("protocol"))
        else:
            self._finish(_Failure("reset"))

    def _finish(self, outcome: _Failure | str | None) -> None:
        """The attempt's outcome is known: detach from the connection, wake the task."""
        pc = self.current
        if pc is not None:
            pc.handler = None
        done = self.done
        if done is None:
            h1 = self.h1
            if h1 is None or h1.in_flight is not self:
                return
            if outcome is None:
                self._end_started()
                return
            h1.resume_in_flight()  # run(resumed) now waits on self.done
            done = self.done
        if done is not None and not done.done():
            done.set_result(outcome)
            h1 = self.h1
            if h1 is not None:  # the attempt goes on now, in this callback
                h1.resume(done)

    def _complete(self, dec: ResponseDecoder) -> None:
        """The response is complete: end it downstream (one write with the last bytes),
        count it, and return the connection to the pool while still in the read
        callback, so nothing the upstream sends later is read as this response's."""
        stream = self.stream
        pc = self.current
        assert pc is not None
        pc.handler = None
        status = dec.status
        state = pc.state
        if state.server == SWITCHED_PROTOCOL and is_upgrade_response(dec.headers):
            # a 101 to the Upgrade request: the tunnel (one without Connection: upgrade
            # and Upgrade is relayed without them and both connections close, below, as
            # Envoy 1.40 does)
            self._count_response(101)
            self._finish("upgrade")
            return
        stream.encode_end()
        cs = self.cs  # _count_response, inlined
        now = time.monotonic()
        (cs.by_status.get(status) or cs.status(status)).response((now - self.started) * 1000)
        self.current = None
        if self.grpc_deferred:  # Envoy's onUpstreamComplete: no grpc-status came
            self.grpc_deferred = False
            self._host_error()
        if dec.trailing:
            # bytes after the response: a protocol error for this connection, never data
            # for anyone (Envoy closes it and counts upstream_cx_protocol_error)
            self.cs.protocol_error.inc()
        if status == 101:
            # a 101 nobody asked for: the connection left HTTP, so it is closed, and so is
            # the client's (Envoy 1.40 relays the 101 and keeps both, so the next request
            # on that upstream connection is not answered; a fresh one serves it here)
            stream.closing = True
            pc.close()
        elif state.next_cycle():
            # both sides were DONE: the response kept the connection alive, the request
            # ended, nothing followed the response and no upgrade was proposed
            stream.req.sink = None
            dec.detach()
            self.router.pool.release(pc, now)
        else:
            if not state.keep_alive and not dec.trailing:
                # the response said Connection: close (or was HTTP/1.0): the upstream's
                # close notice (Envoy's CodecClient counts upstream_cx_close_notify)
                self.cs.stats.inc(self.cs.prefix + "upstream_cx_close_notify")
            pc.close()
        if self.done is None:  # _finish(None), for the request start sent
            h1 = self.h1
            if h1 is not None and h1.in_flight is self:
                # _end_started, inlined (a call less per request, ~0.9 k instructions,
                # callgrind bench_http_cpu.py); no connection is current any more
                self.dec = None
                self.cluster.release("requests")
                hs = self.hs
                if hs is not None and hs.rq_active > 0:
                    hs.rq_active -= 1
                if stream.req.sink is not None:
                    self._drop_current()
                if self.retry_slots:
                    for _ in range(self.retry_slots):
                        self.cluster.release("retries")
                    self.retry_slots = 0
                h1.route_deadline = 0.0
                h1.in_flight_ended()
                return
        self._finish(None)

    def _on_headers(self, dec: ResponseDecoder) -> None:
        status = dec.status
        p = self.policy
        wanted = False
        if p is not None and not self.stream.response_started:
            grpc = None  # the first grpc-status, by a loop (no generator per response)
            for n, v in dec.headers:
                if n == "grpc-status":
                    grpc = v
                    break
            wanted = p.retry_on_status(status, grpc)
            if wanted and self._take_retry():
                self.retry_status = status  # withheld; the attempt ends and is retried
                dec.on_data = _discard
                self._charge("rq_error")
                return
        stream = self.stream
        info = stream.info
        if info.upstream_request_attempt_count > 1:
            self._retry_success(wanted)  # counts only for a retried request
        # Envoy's Filter::chargeUpstreamCode / handleNon5xxResponseHeaders (_charge): a
        # gRPC request's non-5xx response by its grpc-status, from the head when the head
        # ends the response; else it waits for trailers, which Envoy's HTTP/1 codec drops
        # (without enable_trailers, as remora's decoder), so it ends as an error
        # (stream.host_outcome; checked against Envoy 1.40)
        error = status >= 500
        ct = stream.req.hmap.get("content-type")  # (no call for a request without one)
        deferred = False
        if not error and ct is not None and is_grpc_content_type(ct):
            ended = stream.head or status in (204, 304) or (
                dec.content_length == 0 and not dec.chunked)
            if ended:
                error = host_outcome(status, True, dec.headers, ended) != "rq_success"
            else:
                # Envoy's handleNon5xxResponseHeaders: the stat waits for the trailers,
                # which an HTTP/1.1 upstream's never are (rq_error at the end, _complete);
                # a stream cut short before it is charged neither way
                deferred = self.grpc_deferred = True
        hs = self.hs
        if deferred:
            pass
        elif hs is not None:
            if error:
                hs.rq_error += 1
            else:
                hs.rq_success += 1
        elif self.host is not None:  # an HTTP/2 upstream's attempt (proxy/http2)
            self.cluster.host_stat(self.host, "rq_error" if error else "rq_success")

        info.response_code_details = "via_upstream"
        # a response that may have a body but no framing of its own (read until close)
        # is relayed chunked; 1xx (an unrequested 101), 204 and 304 have none. A HEAD
        # response's head says so as the GET's would (Envoy 1.40 writes its
        # transfer-encoding: chunked, and no body)
        chunked = dec.chunked or (dec.content_length is None and status >= 200
                                  and status not in (204, 304))
        req = stream.req
        if req.complete and not req.upgrade:
            # Envoy's x-envoy-upstream-service-time counts from the downstream request's
            # end (Router::Filter::onUpstreamHeaders, downstream_request_complete_time_):
            # the router's start for a whole request, the body's end for a streamed one
            svc: int | None = None if self.router.suppress else int(
                (time.monotonic() - (req.completed_at or self.started)) * 1000)
        else:
            # a final response while the client still uploads (a 413 or 417 before the
            # body was read), or any response to an Upgrade request (whose request goes on
            # as the tunnel): Envoy has no request end to count from, so no service time,
            # and it closes the connection after it, saying connection: close (observed on
            # Envoy 1.40)
            svc = None
            stream.closing = True
        stream.encode_headers(
            status, dec.headers, chunked=chunked, mutations=self.route.response_mutations,
            service_time_ms=svc)

    def _count_response(self, status: int) -> None:
        cs = self.cs
        (cs.by_status.get(status) or cs.status(status)).response(
            (time.monotonic() - self.started) * 1000)

    @property
    def stat(self) -> str:
        """The cluster's stat prefix (``cluster.NAME.``), for the HTTP/2 attempt."""
        return self.cs.prefix

    def _charge(self, stat: str) -> None:
        if self.host is not None:
            self.cluster.host_stat(self.host, stat)

    def _host_error(self) -> None:
        hs = self.hs
        if hs is not None:
            hs.rq_error += 1
        elif self.host is not None:
            self.cluster.host_stat(self.host, "rq_error")

    def _drop_current(self) -> None:
        pc = self.current
        if pc is not None:
            self.current = None
            stream = self.stream
            if stream.response_started:
                # an HTTP/1.1 upstream's response relayed downstream is counted at its end
                # (_complete, which lets the connection go first: upstream_rq_NNN, _Nxx,
                # _completed with its upstream_rq_time, one call); one whose end never
                # came (a route timeout, the client gone, a truncated body) is counted
                # here, without a time, as Envoy counted it with its headers
                # (chargeUpstreamCode in onUpstreamHeaders). A 101 was counted at once.
                status = stream.info.response_code
                if status and status != 101:
                    self.cs.status(status).inc()
            pc.close()
        req = self.stream.req
        if req.sink is not None and not req.complete:
            req.sink = None  # a retry attaches its own; the rest of the body is dropped

    # -- outcomes -------------------------------------------------------------------------
    def _fail(self, f: _Failure) -> None:
        stream = self.stream
        if f.kind == "truncated":
            if self.grpc_deferred:
                # the upstream's reset after the response started: chargeUpstreamAbort
                # charges the deferred gRPC stat as an error (unlike a timeout) and counts
                # the router's rq_reset_after_downstream_response_started
                self._host_error()
                hcm_count(stream, "rq_reset_after_downstream_response_started")
            stream.info.set_flag("UPE")
            stream.info.response_code_details = (
                "upstream_reset_after_response_started{protocol_error}")
            stream.closing = True
            return
        if f.kind == "status":
            return  # unreachable: a retriable status is only withheld when retrying
        if f.kind == "codec":
            stream.interrupted("codec")
            return
        if f.kind == "per_try":
            self._charge("rq_error")
            self._count_abort(504)
            stream.local_reply(504, b"upstream request timeout", "upstream_per_try_timeout",
                               "UT")
            return
        answer = failure_answer(f.kind, f.err, stream.info.upstream_request_attempt_count > 1)
        if answer.status >= 500:
            self._charge("rq_error")  # Envoy's chargeUpstreamAbort
        # charged to the cluster as its status, a refused connection too (upstream_rq_503
        # with upstream_rq_total 0 on Envoy 1.40)
        self._count_abort(answer.status)
        stream.local_reply(answer.status, answer.body, answer.details, answer.flag)

    def _interrupted(self, reason: str, in_flight: bool) -> None:
        """The connection cancelled the request (REASON); IN_FLIGHT: an attempt was under
        way (not between attempts)."""
        if reason == "timeout" and in_flight:
            # Envoy's onResponseTimeout, per upstream request still in flight: the
            # cluster's and host's upstream_rq_timeout, and when it still awaited its
            # headers the 504 charged like a response (chargeUpstreamAbort: upstream_rq_504,
            # _5xx, _completed, the host's rq_error). Between attempts none is in flight.
            self._charge("rq_timeout")
            self.cs.rq_timeout.inc()
            if not self.stream.response_started:
                self._charge("rq_error")
                self._count_abort(504)
        self.stream.interrupted(reason)
