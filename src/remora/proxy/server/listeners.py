"""A bound (or handoff-only) listener and what happens to each connection it accepts.

Per connection: listener filters (peek only) -> ``use_original_dst`` handoff to the
listener of the original destination (exact ip:port, then 0.0.0.0:port, as Envoy's
ConnectionHandlerImpl::getBalancedHandlerByAddress) and its listener filters -> filter
chain match -> the chain's network filters, in order, until one closes the connection.
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/listeners/listeners
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING

from remora.proxy import filter_chain_match
from remora.proxy.config.listener import ListenerConfig
from remora.proxy.interfaces import ConnectionFacts
from remora.proxy.listener_filters import AcceptedSocket
from remora.proxy.server.downstream import DownstreamConnection
from remora.proxy.server.sockets import bind_listener
from remora.proxy.stream_info import StreamInfo, format_address
from remora.proxy.transport import tls
from remora.proxy.transport.connection_info import FailedHandshake

if TYPE_CHECKING:
    from remora.proxy.server.runtime import Server

log = logging.getLogger("remora.proxy")

PEEKING_FILTERS = ("envoy.filters.listener.tls_inspector", "envoy.filters.listener.http_inspector")
LISTENER_COUNTERS = ("downstream_cx_total", "downstream_cx_destroy", "no_filter_chain_match",
                     "downstream_pre_cx_timeout", "downstream_global_cx_overflow",
                     "downstream_listener_filter_error", "downstream_listener_filter_remote_close",
                     # listed at 0 as Envoy lists them, never counted here: a listener's
                     # own connection limit and overload actions are not implemented, and
                     # filters discovered by ECDS (whose config can be missing) are refused
                     "downstream_cx_overflow", "downstream_cx_overload_reject",
                     "downstream_cx_transport_socket_connect_timeout",
                     "extension_config_missing", "network_extension_config_missing")


class ActiveListener:
    def __init__(self, config: ListenerConfig, version: str = "") -> None:
        self.config = config
        # one socket per address (address, then additional_addresses), one accept loop each
        self.socks: list[socket.socket] = []
        # bound before --concurrency forks: worker i's sockets, until keep_worker(i)
        self.worker_socks: list[list[socket.socket]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.version_info = version
        self.last_updated = time.time()

    @property
    def prefix(self) -> str:
        return f"listener.{self.config.stat_prefix or self.config.address.stat_name}."

    def bind(self, *, workers: int = 1, reuse_port: bool = False, pipes: bool = True) -> None:
        """Bind every address. WORKERS > 1 (before the fork of --concurrency workers): one
        SO_REUSEPORT socket per address per worker, as Envoy's listeners do by default on
        Linux (enable_reuse_port: one socket per worker thread; the kernel hashes each new
        connection to one of them, and the worker that accepts it owns it for its life);
        a pipe address, and any address when REUSE_PORT is false (`enable_reuse_port:
        false`: "all worker threads share one socket"), is one socket every worker
        accepts from (a path names one socket). PIPES false: leave pipe addresses to
        worker 0 (an LDS listener added after the fork: a second bind would unlink the
        first worker's socket)."""
        self.worker_socks = [[] for _ in range(workers)]
        try:
            for address in self.config.addresses:
                if address.pipe is not None and not pipes:
                    continue
                if address.pipe is not None or (workers > 1 and not reuse_port):
                    shared = bind_listener(address, transparent=self.config.transparent,
                                           freebind=self.config.freebind)
                    for own in self.worker_socks:
                        own.append(shared)
                    continue
                for own in self.worker_socks:
                    own.append(bind_listener(address, transparent=self.config.transparent,
                                             freebind=self.config.freebind,
                                             reuse_port=reuse_port))
        except BaseException:
            self.stop_accepting()
            raise
        self.socks = self.worker_socks[0]
        if workers == 1:
            self.worker_socks = []

    def keep_worker(self, index: int) -> None:
        """After the fork, in worker INDEX: keep its own sockets and close the other
        workers' copies here, so a worker that exits takes its sockets (and the
        connections the kernel queued on them) out of the SO_REUSEPORT group."""
        if not self.worker_socks:
            return
        mine = self.worker_socks[index]
        keep = {id(sock) for sock in mine}
        for own in self.worker_socks:
            for sock in own:
                if id(sock) not in keep:
                    sock.close()
        self.socks = mine
        self.worker_socks = []

    def start(self, server: Server) -> None:
        server.stats.touch(*(self.prefix + n for n in LISTENER_COUNTERS))
        server.stats.gauges[self.prefix + "downstream_cx_active"] += 0
        server.stats.gauges[self.prefix + "downstream_pre_cx_active"] += 0
        # Envoy's per-handler listener stats: listener.<prefix>.worker_<i>.*
        worker = f"{self.prefix}worker_{server.worker_index}."
        server.stats.touch(worker + "downstream_cx_total")
        server.stats.gauges[worker + "downstream_cx_active"] += 0
        if self.socks and not self.tasks:
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._accept_loop(server, sock))
                          for sock in self.socks]

    def stop_accepting(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        for sock in self.socks:
            sock.close()
        for own in self.worker_socks:
            for sock in own:
                sock.close()
        self.socks = []
        self.worker_socks = []

    async def _accept_loop(self, server: Server, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accept on %s failed: %s", self.config.name, exc)
                await asyncio.sleep(0.05)
                continue
            task = loop.create_task(serve_connection(server, self, conn))
            server.connections.add(task)
            task.add_done_callback(server.connections.discard)


async def _run_listener_filters(listener: ActiveListener, acc: AcceptedSocket,
                                server: Server) -> bool:
    cfg = listener.config
    if not cfg.listener_filters:
        return True

    async def run() -> bool:
        for filt in cfg.listener_filters:
            if not await filt.on_accept(acc):
                if acc.peer_closed is not None:
                    _peer_closed_early(listener, acc, server)
                return False
        return True

    # downstream_pre_cx_active: sockets in the listener filters (Envoy's ActiveTcpSocket)
    pre = listener.prefix + "downstream_pre_cx_active"
    server.stats.gauge_add(pre, 1)
    try:
        peeks = any(n in PEEKING_FILTERS for n in cfg.listener_filter_names)
        if not peeks or cfg.listener_filters_timeout <= 0:
            return await run()
        try:
            return await asyncio.wait_for(run(), cfg.listener_filters_timeout)
        except TimeoutError:
            # listener_filters_timeout: close, or go on with what was learned so far
            server.stats.inc(listener.prefix + "downstream_pre_cx_timeout")
            return cfg.continue_on_listener_filters_timeout
    finally:
        server.stats.gauge_add(pre, -1)


def _peer_closed_early(listener: ActiveListener, acc: AcceptedSocket, server: Server) -> None:
    """The peer closed (FIN: remote_close) or reset (error) while a listener filter still
    waited for bytes: Envoy's ActiveTcpSocket closes the socket, counts
    listener.<prefix>.downstream_listener_filter_{remote_close,error} and still writes the
    listener's access log (no flags, no filter chain) -- observed on Envoy 1.40.
    https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats"""
    server.stats.inc(f"{listener.prefix}downstream_listener_filter_{acc.peer_closed}")
    if listener.config.access_loggers:
        info = _connection_info(acc.facts, listener.config)
        info.finish()
        for logger in listener.config.access_loggers:
            logger.log(info)


def _connection_info(facts: ConnectionFacts, cfg: ListenerConfig) -> StreamInfo:
    return StreamInfo(
        downstream_local_address=format_address(facts.local_ip, facts.local_port),
        downstream_remote_address=format_address(facts.remote_ip, facts.remote_port),
        downstream_direct_remote_address=format_address(facts.direct_remote_ip,
                                                        facts.remote_port),
        requested_server_name=facts.server_name,
        listener_name=cfg.name,
    )


def _facts(conn: socket.socket) -> ConnectionFacts:
    if conn.family == socket.AF_UNIX:
        return ConnectionFacts("", 0, "", 0, "")
    local = conn.getsockname()
    remote = conn.getpeername()
    rip = str(remote[0])
    if rip.startswith("::ffff:"):
        rip = rip[7:]
    return ConnectionFacts(str(local[0]), int(local[1]), rip, int(remote[1]), rip)


async def serve_connection(server: Server, listener: ActiveListener, conn: socket.socket) -> None:
    stats = server.stats
    if server.max_connections is not None and server.active_connections >= server.max_connections:
        # overload manager: global_downstream_max_connections
        stats.inc(listener.prefix + "downstream_global_cx_overflow")
        conn.close()
        return
    server.active_connections += 1
    stats.gauge_add("server.total_connections", 1)
    downstream: DownstreamConnection | None = None
    info: StreamInfo | None = None
    counted: ActiveListener | None = None
    worker = ""  # the per-handler stats of the listener that counted the connection
    started = time.monotonic()
    try:
        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        facts = _facts(conn)
        acc = AcceptedSocket(conn, facts)
        if not await _run_listener_filters(listener, acc, server):
            return
        cfg = listener.config
        if cfg.use_original_dst and facts.restored_local_address:
            target = server.listener_for(facts.local_ip, facts.local_port)
            if target is not None and target is not listener:
                listener = target
                if not await _run_listener_filters(listener, acc, server):
                    return
        cfg = listener.config
        counted = listener
        worker = f"{listener.prefix}worker_{server.worker_index}."
        stats.inc(listener.prefix + "downstream_cx_total")
        stats.gauge_add(listener.prefix + "downstream_cx_active", 1)
        stats.inc(worker + "downstream_cx_total")
        stats.gauge_add(worker + "downstream_cx_active", 1)
        info = _connection_info(facts, cfg)
        if facts.transport_protocol == "tls" and facts.application_protocols:
            info.downstream_alpn = facts.application_protocols[0]
        chain = filter_chain_match.select(cfg.filter_chains, facts, cfg.default_filter_chain)
        if chain is None:
            stats.inc(listener.prefix + "no_filter_chain_match")
            info.set_flag("NR")
            log.debug("no filter chain for %s on %s", info.downstream_local_address, cfg.name)
            return
        info.filter_chain_name = chain.name
        drain = chain.drain
        if drain is None:  # a listener served without the server's drain state (tests)
            drain = chain.drain = server.drain.for_listener(cfg.traffic_direction == "INBOUND")

        async def establish() -> DownstreamConnection | None:
            """The chain's downstream: TLS terminated first (with the chain chosen) when
            it has a transport socket; None when the handshake failed or the chain's
            LDS drain ended meanwhile."""
            if chain.transport is not None:
                try:
                    # a chain with a half-closing filter (tcp_proxy) reads the client's
                    # close_notify as an end of stream (tls._HalfClose)
                    half = any(getattr(f, "half_close", False) for f in chain.filters)
                    reader, writer, peer, alpn = await tls.accept_downstream(
                        conn, chain.transport, cfg.buffer_limit, half,
                        chain.transport_connect_timeout)
                except tls.TlsError as exc:
                    if exc.stat:  # none for a client gone before its first byte
                        stats.inc(listener.prefix + "ssl." + exc.stat)
                    if exc.timed_out:  # Envoy's words and counter (observed on 1.40)
                        stats.inc(listener.prefix
                                  + "downstream_cx_transport_socket_connect_timeout")
                        info.connection_termination_details = \
                            "transport socket timeout was reached"
                    # %DOWNSTREAM_TRANSPORT_FAILURE_REASON% and the TLS operators (what the
                    # handshake got to, a client gone before its first byte included)
                    info.downstream_tls = exc.connection or FailedHandshake(exc.reason)
                    log.debug("TLS handshake on %s failed: %s", cfg.name, exc.reason)
                    return None
                stats.inc(listener.prefix + "ssl.handshake")
                tls.apply_peer(facts, peer, info)
                info.downstream_alpn = alpn or info.downstream_alpn
            else:
                reader, writer = await asyncio.open_connection(sock=conn,
                                                               limit=cfg.buffer_limit)
            if drain.ended:  # its LDS drain ended while the connection was being set up
                writer.close()
                return None
            return DownstreamConnection(reader, writer, facts, info, drain, cfg.buffer_limit)

        task = asyncio.current_task()
        if task is not None:  # closed with the chain when an LDS drain of it ends
            drain.connections.add(task)
            task.add_done_callback(drain.connections.discard)
        first = getattr(chain.filters[0], "on_new_tls_connection", None) \
            if chain.filters and chain.transport is not None else None
        if first is not None:
            # the first filter starts with the connection, its TLS handshake under way
            # (tcp_proxy: Envoy's onNewConnection comes before the handshake ends)
            established = asyncio.ensure_future(establish())
            try:
                await first(facts, info, established)
            finally:
                if not established.done():  # the filter ended first (no upstream)
                    established.cancel()
                    with contextlib.suppress(BaseException):
                        await established
                elif not established.cancelled() and established.exception() is None:
                    downstream = established.result()
            return
        downstream = await establish()
        if downstream is None:
            return
        for filt in chain.filters:
            await filt.on_connection(downstream)
            if downstream.closed:
                break
    except (ConnectionError, OSError) as exc:
        log.debug("connection on %s ended: %s", listener.config.name, exc)
    except Exception:
        log.exception("filter failed on listener %s", listener.config.name)
    finally:
        server.active_connections -= 1
        stats.gauge_add("server.total_connections", -1)
        if downstream is not None:
            downstream.close()
        else:
            with contextlib.suppress(OSError):
                conn.close()
        if counted is not None:
            stats.gauge_add(counted.prefix + "downstream_cx_active", -1)
            stats.gauge_add(worker + "downstream_cx_active", -1)
            stats.inc(counted.prefix + "downstream_cx_destroy")
            stats.observe(counted.prefix + "downstream_cx_length_ms",
                          (time.monotonic() - started) * 1000)
            if info is not None and counted.config.access_loggers:
                info.finish()
                for logger in counted.config.access_loggers:
                    logger.log(info)
