"""Running the proxy: load, drop privileges, fork ``--concurrency`` workers, serve.

Workers are processes, because one Python process runs one core. As Envoy's listeners do
by default on Linux (enable_reuse_port), every listener has one SO_REUSEPORT socket per
worker, all bound before the fork: the kernel hashes each new connection to one worker,
which owns it for its life (a unix socket, or `enable_reuse_port: false`: one socket all
workers accept from; docs/proxy.md "Workers"). Worker 0 is the main process: it also
serves the admin API and shows stats merged from every worker (each sends a snapshot
twice a second), among them Envoy's per-worker
listener.<prefix>.worker_<i>.downstream_cx_{total,active}.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import encodings.idna  # noqa: F401  (imported before the fork: see _share_with_workers)
import gc
import json
import logging
import os
import signal
import sys
from typing import Any

from remora.proxy.access_log.sink import flush_all
from remora.proxy.admin.server import Admin
from remora.proxy.config.bootstrap import parse_bootstrap, read_document
from remora.proxy.config.strict import ConfigError
from remora.proxy.server.runtime import Server
from remora.proxy.stats import StatsStore

log = logging.getLogger("remora.proxy")
SNAPSHOT_INTERVAL = 0.5
PR_SET_PDEATHSIG = 1
# Control-plane counters are counted by the main process only.
_MAIN_ONLY = ("listener_manager.", "cluster_manager.")


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, format="[%(asctime)s][%(process)d][%(levelname)s] "
                                                  "%(message)s")
    logging.getLogger("remora").setLevel(level.upper())


def load(config_path: str, concurrency: int) -> Server:
    """Parse and validate everything; raises ConfigError / PrivilegeError (one line).
    An error in the bootstrap names its file first, as Envoy's "error initializing
    configuration 'FILE': ..." does (an error in an LDS/CDS file names that file)."""
    try:
        boot = parse_bootstrap(read_document(config_path), config_path)
        server = Server(boot, concurrency)
        server.load()
    except ConfigError as exc:
        raise _in_file(exc, config_path) from exc
    return server


def _in_file(exc: ConfigError, config_path: str) -> ConfigError:
    """EXC with CONFIG_PATH in front of its field path, unless it names a file already
    (read and syntax errors say "cannot read FILE", "FILE is not valid JSON"; a discovery
    file's errors are at "FILE: resources[i]...")."""
    if config_path in exc.problem or ": " in exc.path:
        return exc
    return ConfigError(f"{config_path}: {exc.path}" if exc.path else config_path,
                       exc.message, exc.fix)


def drop_privileges(group: int | None, user: int | None) -> None:
    """Run as Istio's sidecar does: gid 1337 (so `--gid-owner 1337` capture rules let its
    own traffic through), uid 1337 where no capability is needed."""
    if group is not None:
        os.setgroups([])
        os.setgid(group)
    if user is not None:
        os.setuid(user)


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _share_with_workers() -> None:
    """Keep the loaded config's pages shared copy-on-write with the forked workers.
    CPython's gc would otherwise write into the header of every object it traverses in a
    full collection, in each process, and so copy every page of the parent's objects into
    each worker: gc.freeze() moves everything loaded so far to a permanent generation that
    collections skip, as the gc module's documentation recommends right before fork().
    What would be imported lazily after the fork is imported before it instead (the idna
    codec: the first upstream connect by host name imports it). Measured with
    scripts/proxy_memory.py (two workers, 20,000 requests): PSS 35.7 -> 29.1 MiB, RSS
    60.9 -> 57.6 MiB."""
    gc.collect()
    # hand the heap that loading freed back to the kernel (glibc), so no worker inherits
    # it: -2.5 MiB RSS for two workers here
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(0)
    gc.freeze()


# the cyclic GC's young-generation threshold (CPython's default: 700 allocations net of
# deallocations). The proxy's per-request objects leave no cycles (they go by reference
# counting), but a multiplexing client keeps many streams in flight at once: 16 HTTP/2
# connections x 10 streams hold thousands of young objects, so at 700 a collection ran
# every ~50-100 requests and traversed them all before they died anyway (h2load -c16 -m10
# on loopback, 30,000 requests: 350 collections, 3 % of the proxy's CPU to an HTTP/1.1
# upstream, 710 and 7 % to an HTTP/2 one; at 10,000: none). Only cyclic garbage waits
# longer for its collection.
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Collect the young generation every GC_YOUNG_THRESHOLD net allocations instead of
    700 (the older generations' thresholds are left as they are)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run(server: Server, options: dict[str, Any]) -> int:
    _use_uvloop()
    readers: list[int] = []
    children: list[int] = []
    if server.concurrency > 1:
        server.bind_workers()  # a bind error here is fatal, before anything forks
    # also with one worker: full collections then skip the loaded config's objects
    # (callgrind, scripts/bench_http_cpu.py: 314 -> 309 k instructions per request)
    _share_with_workers()
    _tune_gc()  # (inherited by the workers)
    for index in range(1, server.concurrency):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker
            os.close(r)
            for fd in readers:  # the earlier workers' pipes are the main process's
                os.close(fd)
            server.keep_worker(index)
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            code = 0
            try:
                asyncio.run(_worker(server, w))
            except BaseException:
                code = 1
            flush_all()
            os._exit(code)
        os.close(w)
        readers.append(r)
        children.append(pid)
    server.keep_worker(0)
    try:
        server.on_drain = lambda inbound_only, graceful: _signal(
            children, _DRAIN_SIGNALS[graceful, inbound_only])
        return asyncio.run(_main(server, options, readers))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        flush_all()


# (graceful, inbound_only) -> the signal that relays /drain_listeners to the workers
_DRAIN_SIGNALS = {(False, False): signal.SIGUSR1, (False, True): signal.SIGUSR2,
                  (True, False): signal.SIGRTMIN, (True, True): signal.SIGRTMIN + 1}


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop_on_signals(server: Server) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop()))


async def _worker(server: Server, pipe_fd: int) -> None:
    await server.start()
    _stop_on_signals(server)
    loop = asyncio.get_running_loop()
    # The main process relays /drain_listeners: SIGUSR1 all, SIGUSR2 inbound only;
    # ?graceful: SIGRTMIN all, SIGRTMIN+1 inbound only.
    for (graceful, inbound_only), sig in _DRAIN_SIGNALS.items():
        loop.add_signal_handler(sig, server.drain_listeners, inbound_only, graceful)
    os.set_blocking(pipe_fd, False)
    while not server.stopped.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.stopped.wait(), SNAPSHOT_INTERVAL)
        snap = server.stats.snapshot()
        for kind in ("counters", "gauges"):
            snap[kind] = {k: v for k, v in snap[kind].items() if not k.startswith(_MAIN_ONLY)}
        with contextlib.suppress(OSError):
            os.write(pipe_fd, json.dumps(snap).encode() + b"\n")
    del loop


async def _main(server: Server, options: dict[str, Any], readers: list[int]) -> int:
    loop = asyncio.get_running_loop()
    snapshots: dict[int, dict[str, Any]] = {}
    buffers: dict[int, bytes] = {}

    def on_readable(fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            loop.remove_reader(fd)
            return
        data = buffers.get(fd, b"") + chunk
        *lines, rest = data.split(b"\n")
        buffers[fd] = rest
        if lines:
            snapshots[fd] = json.loads(lines[-1])

    for fd in readers:
        os.set_blocking(fd, False)
        loop.add_reader(fd, on_readable, fd)

    def stats_view() -> StatsStore:
        server.refresh_server_stats()
        if not snapshots:
            return server.stats
        return server.stats.merged(list(snapshots.values()))

    await server.start()
    tasks: set[asyncio.Task[None]] = set()

    def quit_() -> None:
        task = loop.create_task(server.stop())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    admin = Admin(server, options, stats_view, quit_)
    await admin.start()
    _stop_on_signals(server)
    log.info("remora proxy serving %d listener(s), concurrency %d",
             len(server.listeners), server.concurrency)
    await server.stopped.wait()
    await admin.stop()
    return 0
