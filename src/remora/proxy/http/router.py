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
from functools import partial

from remora.proxy import registry
from remora.proxy.config.strict import Fields
from remora.proxy.http.codec import ResponseDecoder, ResponseError
from remora.proxy.http.connection import BUFFER_LIMIT, READ_SIZE
from remora.proxy.http.header_mutation import apply as apply_mutations
from remora.proxy.http.pool import PooledConnection, limits_of, pool_for, pool_key
from remora.proxy.http.retry import RetryPolicy
from remora.proxy.http.route_config import Route
from remora.proxy.http.stream import ActiveStream
from remora.proxy.http.upgrade import tunnel
from remora.proxy.http.upstream_failure import failure_answer
from remora.proxy.http.upstream_request import BodySink, encode_request_head
from remora.proxy.http2.upstream import forward_h2, http2_upstream
from remora.proxy.interfaces import Cluster, FactoryContext, UpstreamError

ROUTER_NAME = "envoy.filters.http.router"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"


def _discard(data: bytes) -> None:
    pass


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


class Router:
    terminal = True

    def __init__(self, ctx: FactoryContext, suppress_envoy_headers: bool = False) -> None:
        self.cluster_manager = ctx.cluster_manager
        self.stats = ctx.stats
        self.suppress = suppress_envoy_headers
        self.pool = pool_for(self.cluster_manager)

    async def decode_headers(self, stream: ActiveStream) -> bool:
        route = stream.route
        if route is None:
            return stream.local_reply(404, b"", "route_not_found", "NR")
        if route.direct_response is not None:
            status, body = route.direct_response
            return stream.local_reply(status, body, "direct_response")
        assert route.cluster is not None
        cluster = self.cluster_manager.get(route.cluster)
        if cluster is None:
            return stream.local_reply(503, b"", "cluster_not_found", "NC")
        await _Forward(self, stream, route, cluster).run()
        return False


class _Forward:
    """One request's trip upstream: attempts, retries, and the final outcome."""

    def __init__(self, router: Router, stream: ActiveStream, route: Route,
                 cluster: Cluster) -> None:
        self.router = router
        self.stream = stream
        self.route = route
        self.cluster = cluster
        self.policy: RetryPolicy | None = route.retry_policy
        self.retries_left = self.policy.num_retries if self.policy is not None else 0
        self.reselections = (self.policy.host_selection_retry_max_attempts
                             if self.policy is not None else 1)
        self.retry_slots = 0  # "retries" circuit-breaker slots held
        self.tried: set[str] = set()
        self.current: PooledConnection | None = None
        self.host: str | None = None  # the current (or last) attempt's host, for its stats
        self.retry_status = 0
        self.started = time.monotonic()
        self.stat = f"cluster.{cluster.name}."

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        stream = self.stream
        conn = stream.conn
        loop = conn.loop
        timeout = self.route.timeout
        timer = loop.call_later(timeout, conn.cancel_active, "timeout") if timeout > 0 else None
        exclude: frozenset[str] = frozenset()
        try:
            while True:
                per_try = self.policy.per_try_timeout if self.policy is not None else 0.0
                slots = self.retry_slots  # held for this attempt; released when it ends
                try_timer = (loop.call_later(per_try, conn.cancel_active, "per_try")
                             if per_try > 0 else None)
                try:
                    await self._attempt(exclude)
                    return
                except _Failure as f:
                    failure = f
                except asyncio.CancelledError:
                    reason = conn.cancel_reason
                    if reason != "per_try":
                        raise
                    conn._take_cancel()
                    failure = _Failure("per_try")
                finally:
                    if try_timer is not None:
                        try_timer.cancel()
                    self._drop_current()
                    for _ in range(slots):
                        self.cluster.release("retries")
                    self.retry_slots -= slots
                if failure.kind == "per_try":
                    self._charge("rq_timeout")
                if failure.kind == "status" or self._may_retry(failure.kind):
                    if failure.kind != "status":  # a retried status was charged already
                        self._charge("rq_error")  # as Envoy's Filter::maybeRetryReset
                    self.router.stats.inc(self.stat + "upstream_rq_retry")
                    if self.policy is not None and self.policy.previous_hosts:
                        exclude = frozenset(self.tried)
                    n = (self.policy.num_retries if self.policy else 1) - self.retries_left
                    await asyncio.sleep(self.policy.backoff(n) if self.policy else 0)
                    continue
                self._fail(failure)
                return
        except asyncio.CancelledError:
            reason = conn._take_cancel()
            if reason is None:
                raise
            self._drop_current()
            self._interrupted(reason)
        finally:
            if timer is not None:
                timer.cancel()
            for _ in range(self.retry_slots):
                self.cluster.release("retries")
            self.retry_slots = 0

    def _may_retry(self, kind: str) -> bool:
        """Whether the policy retries KIND now; takes a "retries" circuit-breaker slot."""
        p = self.policy
        if p is None or self.stream.response_started:
            return False
        if kind == "connect":
            wanted = p.retry_on_connect_failure()
        elif kind in ("reset", "protocol"):
            wanted = p.retry_on_reset(True)
        elif kind == "per_try":
            wanted = "5xx" in p.retry_on or "gateway-error" in p.retry_on
        else:
            wanted = False
        return wanted and self._take_retry()

    def _take_retry(self) -> bool:
        if self.retries_left <= 0:
            if self.policy is not None and self.policy.num_retries > 0:
                self.stream.info.set_flag("URX")  # the retry limit was reached
            return False
        if not self.stream.req.retain:
            return False  # the body outgrew the buffer: nothing to resend
        if not self.cluster.try_acquire("retries"):
            return False
        self.retries_left -= 1
        self.retry_slots += 1
        return True

    # -- one attempt ----------------------------------------------------------------------
    async def _attempt(self, exclude: frozenset[str]) -> None:
        stream, cluster, router = self.stream, self.cluster, self.router
        info = stream.info
        info.upstream_request_attempt_count += 1
        self.retry_status = 0
        self.host = None
        attached: str | None = None  # the host whose rq_active this attempt holds
        if not cluster.try_acquire("requests"):
            raise _Failure("connect", UpstreamError("UO", ""))
        try:
            if http2_upstream(cluster, info.protocol):  # the HTTP/2 pool (proxy/http2)
                await forward_h2(self, exclude, _Failure)
                return
            facts = stream.conn.downstream.facts
            key = pool_key(cluster.name, facts)
            pc = router.pool.acquire(key, exclude, cluster)
            fresh = pc is None
            if pc is None:
                if not cluster.try_acquire("pending_requests"):
                    raise _Failure("connect", UpstreamError("UO", ""))
                try:
                    # previous_hosts: the cluster re-picks an excluded host up to
                    # host_selection_retry_max_attempts times, then uses its last pick, so
                    # ruling out every host retries one already tried (UH only when no
                    # host is healthy, counted once by the cluster)
                    up = await cluster.connect(
                        facts, info, exclude,
                        host_selection_retry_max_attempts=self.reselections)
                except UpstreamError as err:
                    if err.host:
                        self.tried.add(err.host)
                        self.host = err.host
                    raise _Failure("connect", err) from None
                finally:
                    cluster.release("pending_requests")
                # the pool counts stray bytes on it; bound to the stats only, so a pooled
                # connection keeps nothing of this request alive
                pc = PooledConnection(key, up, limits_of(cluster), cluster, partial(
                    router.stats.inc, self.stat + "upstream_cx_protocol_error"))
            else:
                info.upstream_host = pc.host
                info.upstream_local_address = pc.upstream.local_address
            info.upstream_cluster = cluster.name
            self.current = pc
            self.tried.add(pc.host)
            router.stats.inc(self.stat + "upstream_rq_total")
            self.host = pc.host
            cluster.host_stat(pc.host, "rq_total")
            cluster.host_stat(pc.host, "rq_active")
            attached = pc.host
            if stream.conn.decoder.error is not None and not stream.req.complete:
                # The body was malformed in the same read as its headers: Envoy answers 400
                # DPE. It has picked the host by then; a pooled connection is attached at
                # once, a new one is still connecting, so UPSTREAM_LOCAL_ADDRESS is logged
                # only in the first case (observed on Envoy 1.40).
                if fresh:
                    info.upstream_local_address = None
                raise _Failure("codec")
            self._send_request(pc)
            await self._relay_response(pc)
        finally:
            cluster.release("requests")
            if attached is not None:
                cluster.host_stat(attached, "rq_active", -1)

    def _send_request(self, pc: PooledConnection) -> None:
        stream, req = self.stream, self.stream.req
        w = pc.upstream.writer
        extra = None
        if not self.router.suppress and self.route.timeout > 0:
            remaining = self.route.timeout - (time.monotonic() - self.started)
            per_try = self.policy.per_try_timeout if self.policy is not None else 0.0
            if 0 < per_try < remaining:
                remaining = per_try
            extra = ("x-envoy-expected-rq-timeout-ms", str(max(int(remaining * 1000), 0)))
        headers = stream.upstream_headers
        mutations = self.route.request_mutations
        if mutations:
            headers = apply_mutations(headers, mutations)
            hdrs = stream.info.request_headers
            if hdrs is not None:  # REQ() in the access log sees the mutated request
                for name in mutations.remove:
                    hdrs.pop(name, None)
                for name, _, _ in mutations.add:
                    values = [v for n, v in headers if n == name]
                    if values:
                        hdrs[name] = ",".join(values)
        w.write(encode_request_head(stream.method, stream.path, headers, extra))
        # the body is framed as the forwarded head says (stream.upstream_chunked), which
        # is not always how the client framed it (a nominated content-length)
        sink = BodySink(w, stream.upstream_chunked)
        for chunk in req.body:
            sink.data(chunk)
        if req.complete:
            sink.end()
        else:
            # without a retry policy nothing is ever resent: keep no copy of the body
            req.attach(sink, BUFFER_LIMIT if self.policy is not None else -1)
            stream.conn.resume_reading()

    async def _relay_response(self, pc: PooledConnection) -> None:
        stream = self.stream
        reader = pc.upstream.reader
        dec = ResponseDecoder(stream.head, self._on_headers, stream.encode_data)
        conn = stream.conn
        loop = conn.loop
        while not dec.complete:
            try:
                data = await reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            conn.last_activity = loop.time()
            if not data:
                if dec.eof_completes():
                    dec.keep_alive = False
                    break
                stream.flush()
                raise _Failure("truncated" if dec.headers_done else "reset")
            try:
                dec.feed(data)
            except ResponseError:
                stream.flush()
                self._count_protocol_error()
                raise _Failure("truncated" if dec.headers_done else "protocol") from None
            if self.retry_status:
                raise _Failure("status")
            stream.flush()
            if conn.write_paused:
                await conn.drain()
        req = stream.req
        if dec.status == 101 and req.upgrade:
            self._count_response(101)
            self.current = None  # the tunnel owns and closes it
            await tunnel(stream, pc, dec)
            return
        stream.encode_end()
        self._count_response(dec.status)
        self.current = None
        if dec.trailing:
            # bytes after the response: a protocol error for this connection, never data
            # for anyone (Envoy closes it and counts upstream_cx_protocol_error)
            self._count_protocol_error()
        if dec.status == 101:
            # a 101 nobody asked for: the connection left HTTP, so it is closed, and so is
            # the client's (Envoy 1.40 relays the 101 and keeps both, so the next request
            # on that upstream connection is not answered; a fresh one serves it here)
            stream.closing = True
            pc.close()
        elif dec.keep_alive and req.complete and not dec.trailing and not req.upgrade:
            req.sink = None
            self.router.pool.release(pc)
        else:
            pc.close()

    def _on_headers(self, dec: ResponseDecoder) -> None:
        status = dec.status
        p = self.policy
        if p is not None and not self.stream.response_started:
            grpc = next((v for n, v in dec.headers if n == "grpc-status"), None)
            if p.retry_on_status(status, grpc) and self._take_retry():
                self.retry_status = status  # withheld; the attempt ends and is retried
                dec.on_data = _discard
                self._charge("rq_error")
                return
        # Envoy's Filter::chargeUpstreamCode / handleNon5xxResponseHeaders
        self._charge("rq_error" if status >= 500 else "rq_success")
        stream = self.stream
        stream.info.response_code_details = "via_upstream"
        framed = dec.chunked or dec.content_length is not None
        # a response that may have a body but no framing of its own (read until close)
        # is relayed chunked; 1xx (an unrequested 101), 204 and 304 have none
        chunked = dec.chunked or (not framed and status >= 200 and status not in (204, 304)
                                  and not stream.head)
        ms = int((time.monotonic() - self.started) * 1000)
        stream.encode_headers(status, dec.headers, chunked=chunked,
                              mutations=self.route.response_mutations,
                              service_time_ms=None if self.router.suppress else ms)

    def _count_response(self, status: int) -> None:
        stats = self.router.stats
        inc = stats.inc
        inc(f"{self.stat}upstream_rq_{status // 100}xx")
        inc(f"{self.stat}upstream_rq_{status}")
        inc(self.stat + "upstream_rq_completed")
        stats.observe(self.stat + "upstream_rq_time", (time.monotonic() - self.started) * 1000)
        if self.stream.info.upstream_request_attempt_count > 1 and status < 500:
            inc(self.stat + "upstream_rq_retry_success")

    def _count_protocol_error(self) -> None:
        self.router.stats.inc(self.stat + "upstream_cx_protocol_error")

    def _charge(self, stat: str) -> None:
        if self.host is not None:
            self.cluster.host_stat(self.host, stat)

    def _drop_current(self) -> None:
        pc = self.current
        if pc is not None:
            self.current = None
            pc.close()
        req = self.stream.req
        if req.sink is not None and not req.complete:
            req.sink = None  # a retry attaches its own; the rest of the body is dropped

    # -- outcomes -------------------------------------------------------------------------
    def _fail(self, f: _Failure) -> None:
        stream = self.stream
        if f.kind == "truncated":
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
            self.router.stats.inc(self.stat + "upstream_rq_per_try_timeout")
            stream.local_reply(504, b"upstream request timeout", "upstream_per_try_timeout",
                               "UT")
            return
        answer = failure_answer(f.kind, f.err, stream.info.upstream_request_attempt_count > 1)
        if answer.status >= 500:
            self._charge("rq_error")  # Envoy's chargeUpstreamAbort
        stream.local_reply(answer.status, answer.body, answer.details, answer.flag)

    def _interrupted(self, reason: str) -> None:
        if reason == "timeout":
            self._charge("rq_timeout")
            if not self.stream.response_started:
                self._charge("rq_error")  # the 504 is charged to the host
            self.router.stats.inc(self.stat + "upstream_rq_timeout")
        self.stream.interrupted(reason)
