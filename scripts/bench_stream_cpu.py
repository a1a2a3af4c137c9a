#!/usr/bin/env python3
"""Benchmark the connection manager's per-request work without sockets: what one HTTP/1.1
request costs in ``ActiveStream`` (construction, ``prepare``, ``encode_headers``, the
body and end) and in ``HttpConnectionManager.serve``/``complete`` (stats, the access log
line), on the seed's server sidecar config (tests/data/reference/envoy-sidecar/
server-redirect.json, its HTTP chain; the access log goes to /dev/null instead of stdout).

The router is left out (the filters before it run): this measures the part of a request
that depends only on the listener's config. Prints microseconds per request; figures
vary between machines, compare runs on one machine. No root, no network.

    python3 scripts/bench_stream_cpu.py [--requests 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any

from remora.proxy import access_log, registry
from remora.proxy.config.strict import Fields, type_url_of
from remora.proxy.http.codec import RequestDecoder
from remora.proxy.http.stream import ActiveStream
from remora.proxy.interfaces import AccessLogger, ConnectionFacts
from remora.proxy.stats import StatsStore
from remora.proxy.stream_info import StreamInfo

CONFIG = (Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"
          / "envoy-sidecar" / "server-redirect.json")
REQUEST = (b"GET /index.html?x=1 HTTP/1.1\r\nHost: server.default.svc.cluster.local:18080\r\n"
           b"User-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESPONSE_HEADERS = [("content-type", "text/plain"), ("content-length", "5"),
                    ("date", "Fri, 04 Dec 2026 17:00:00 GMT"), ("server", "backend")]


class _Context:
    def __init__(self) -> None:
        self.stats = StatsStore()
        self.cluster_manager: Any = None

    def access_loggers(self, configs: list[Any], path: str) -> list[AccessLogger]:
        return access_log.build(configs, path, self)


class _Writer:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


class _Downstream:
    def __init__(self) -> None:
        self.facts = ConnectionFacts("10.20.0.77", 18080, "10.20.0.78", 33204, "10.20.0.78")
        self.info = StreamInfo(downstream_local_address="10.20.0.77:18080",
                               downstream_remote_address="10.20.0.78:33204",
                               downstream_direct_remote_address="10.20.0.78:33204",
                               listener_name="virtualInbound", filter_chain_name="0.0.0.0_18080")


class _Conn:
    """The members of Http1Connection that ActiveStream and the HCM read."""

    def __init__(self, hcm: Any) -> None:
        self.hcm = hcm
        self.cfg = hcm.cfg
        self.encoders = hcm.encoders
        self.sanitize_xfcc = hcm.sanitize_xfcc
        self.downstream = _Downstream()
        self.writer = _Writer()
        self.scheme = "http"
        self.draining = False

    def node_ip(self) -> str | None:
        return None

    def _take_cancel(self) -> str | None:
        return None


def _hcm() -> Any:
    bootstrap = json.loads(CONFIG.read_text())
    chain = bootstrap["static_resources"]["listeners"][0]["filter_chains"][1]
    typed = copy.deepcopy(chain["filters"][0]["typed_config"])
    for entry in typed.get("access_log", []):
        entry["typed_config"]["path"] = "/dev/null"
    f = Fields(typed, "typed_config")
    ext = registry.lookup("network", "envoy.filters.network.http_connection_manager",
                          type_url_of(f), "typed_config")
    return ext.factory(f, _Context())


async def run(n: int, per_turn: int) -> float:
    hcm = _hcm()
    # the filters before the router (Istio's fault and cors) run, the router does not: only
    # the connection manager's own work
    hcm.decoders = [f for f in hcm.decoders if not getattr(f, "terminal", False)]
    conn = _Conn(hcm)
    dec = RequestDecoder(60 * 1024, 100, 1 << 20)
    dec.feed(REQUEST)
    req = dec.ready.popleft()
    start = time.process_time()
    for i in range(n):
        if i % per_turn == 0:
            await asyncio.sleep(0)  # one loop turn: the access-log sink may write
        stream = ActiveStream(conn, req)  # type: ignore[arg-type]
        coro = hcm.serve(stream)
        with contextlib.suppress(StopIteration):
            coro.send(None)
        route = stream.route
        stream.encode_headers(200, RESPONSE_HEADERS, chunked=False, service_time_ms=1,
                              mutations=route.response_mutations if route else None)
        stream.encode_data(b"hello")
        stream.encode_end()
        hcm.complete(stream)
    elapsed = time.process_time() - start
    return elapsed / n * 1e6


async def _main(requests: int, repeat: int, per_turn: int) -> None:
    results = [await run(requests, per_turn) for _ in range(repeat)]
    # let the access-log sink's scheduled flush run before the loop closes
    await asyncio.sleep(0.2)
    best = min(results)
    print(f"per request: best {best:.2f} us, median {sorted(results)[len(results) // 2]:.2f} "
          f"us over {repeat} runs of {requests} ({per_turn} per loop turn)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--per-turn", type=int, default=4,
                        help="requests completed per event-loop turn (a busy proxy serves "
                             "several connections per turn)")
    args = parser.parse_args()
    asyncio.run(_main(args.requests, args.repeat, args.per_turn))


if __name__ == "__main__":
    main()
