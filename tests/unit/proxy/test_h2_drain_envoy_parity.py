"""What an HTTP/2 downstream connection sees of a drain when no response starts on it,
held to a real Envoy 1.40 on loopback (no root): the same bootstrap (a listener from an
LDS file, path_config_source) and command line run by `envoy` and `remora proxy` side by
side, raw frames compared (server/drain.py says what it is).

- ``/drain_listeners?graceful``, an idle h2c connection: at a random moment in the last
  third of --drain-time-s, GOAWAY 2^31-1, ``drain_timeout`` later the final GOAWAY (last
  stream 1), then the connection closes; with either --drain-strategy;
- the listener removed by LDS, an h2c stream still waiting on an upstream that never
  answers: the same two GOAWAYs within the drain time, then, when it is over, the
  connection is closed with nothing more sent (no third GOAWAY, no RST_STREAM);
- SIGTERM: an idle h2c connection is closed with nothing sent.

Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hyperframe.frame as hf
import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2.raw_h2 import RawH2
from tests.unit.proxy.proxy_helpers import addr, free_port, write_atomic

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
DRAIN_TIME_S = 4
DRAIN_TIMEOUT = 0.2  # the HCM's; small beside the drain time, so both GOAWAYs fit in it
LAST_STREAM = 2**31 - 1


def _listener(port: int) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "web", "codec_type": "AUTO",
           "drain_timeout": f"{DRAIN_TIMEOUT}s",
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"path": "/slow"}, "route": {"cluster": "slow", "timeout": "0s"}},
               {"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    return {"name": "web", "address": addr("127.0.0.1", port), "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}


def _lds(version: str, *listeners: dict[str, Any]) -> dict[str, Any]:
    return {"version_info": version,
            "resources": [{"@type": LISTENER, **lst} for lst in listeners]}


def _hold(conn: socket.socket) -> None:
    """The slow upstream: takes the request, never answers."""
    while conn.recv(65536):
        pass


@dataclass
class Proxy:
    port: int
    admin: int
    lds: Path
    proc: Any

    def post(self, path: str) -> None:
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200


@contextmanager
def _proxy(kind: str, tmp: Path, *extra: str) -> Iterator[Proxy]:
    upstream = lp.thread_server(_hold, threaded=True)
    try:
        port, admin = free_port(), free_port()
        lds = tmp / f"{kind}-lds.json"
        write_atomic(lds, _lds("1", _listener(port)))
        boot = {"admin": {"address": addr("127.0.0.1", admin)},
                "node": {"id": "n", "cluster": "c"},
                "static_resources": {"clusters": [{
                    "name": "slow", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "slow", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": addr("127.0.0.1",
                                                      upstream.getsockname()[1])}}]}]}}]},
                "dynamic_resources": {"lds_config": {
                    "resource_api_version": "V3", "path_config_source": {"path": str(lds)}}}}
        cfg = tmp / f"{kind}.json"
        cfg.write_text(json.dumps(boot))
        with lp.loopback_proxy(kind, cfg, port,
                               args=["--drain-time-s", str(DRAIN_TIME_S), *extra]) as proc:
            yield Proxy(port, admin, lds, proc)
    finally:
        upstream.close()


def _after(h2: RawH2, t0: float) -> list[tuple[Any, ...]]:
    """The frames received since T0 (monotonic) but SETTINGS and WINDOW_UPDATE, each as
    (seconds after T0, type, GOAWAY's last stream and code), then ("closed", seconds)."""
    out: list[tuple[Any, ...]] = []
    for t, f in h2.frames:
        if h2.t0 + t < t0 or isinstance(f, (hf.SettingsFrame, hf.WindowUpdateFrame)):
            continue  # (compared unrounded: a frame 4 ms before T0 rounds to -0.0)
        at = round(h2.t0 + t - t0, 2)
        if isinstance(f, hf.GoAwayFrame):
            out.append((at, "GOAWAY", f.last_stream_id, f.error_code))
        else:
            out.append((at, type(f).__name__))
    if h2.closed_at is not None:
        out.append(("closed", round(h2.t0 + h2.closed_at - t0, 2)))
    return out


async def _served(port: int) -> RawH2:
    """An h2c connection whose stream 1 (GET /) was answered, to its END_STREAM: idle
    now (the status alone could leave its DATA frame to arrive at the SIGTERM's time)."""
    h2 = await RawH2.connect(port)
    h2.request(1)
    for _ in range(100):
        if any(getattr(f, "stream_id", 0) == 1 and "END_STREAM" in f.flags
               for _, f in h2.frames):
            break
        await asyncio.sleep(0.02)
    assert h2.statuses.get(1) == "200"
    return h2


def _shape(seen: list[tuple[Any, ...]]) -> list[Any]:
    """SEEN without the times: what the parity is about."""
    return [e[1:] if e[0] != "closed" else "closed" for e in seen]


def _graceful_idle(kind: str, tmp: Path, strategy: str) -> list[tuple[Any, ...]]:
    with _proxy(kind, tmp, "--drain-strategy", strategy) as p:
        async def story() -> list[tuple[Any, ...]]:
            h2 = await _served(p.port)
            await asyncio.to_thread(p.post, "/drain_listeners?graceful")
            t0 = time.monotonic()
            await asyncio.wait_for(h2.closed.wait(), DRAIN_TIME_S + 2.5)
            seen = _after(h2, t0)
            await h2.close()
            return seen
        return asyncio.run(story())


@pytest.mark.parametrize("strategy", ["immediate", "gradual"])
def test_graceful_drain_tells_an_idle_h2_connection(tmp_path: Path, strategy: str) -> None:
    def story(kind: str) -> list[tuple[Any, ...]]:
        (tmp_path / kind).mkdir()
        return _graceful_idle(kind, tmp_path / kind, strategy)
    seen = lp.each_kind(story)
    assert _shape(seen["remora"]) == _shape(seen["envoy"]), seen
    assert _shape(seen["envoy"]) == [("GOAWAY", LAST_STREAM, 0), ("GOAWAY", 1, 0), "closed"]
    for kind, frames in seen.items():
        first, final = frames[0][0], frames[1][0]
        # not at the drain's start, within its last third (give or take the machine)
        assert DRAIN_TIME_S / 2 < first < DRAIN_TIME_S + 0.5, (kind, frames)
        assert abs(final - first - DRAIN_TIMEOUT) < 0.3, (kind, frames)  # (a loaded machine)


def _removed_busy(kind: str, tmp: Path) -> tuple[list[tuple[Any, ...]], str | None]:
    with _proxy(kind, tmp, "--drain-strategy", "immediate") as p:
        async def story() -> tuple[list[tuple[Any, ...]], str | None]:
            h2 = await RawH2.connect(p.port)
            h2.request(1, "/slow")
            await asyncio.sleep(0.5)  # the request is at the upstream, unanswered
            write_atomic(p.lds, _lds("2"))
            t0 = time.monotonic()
            await asyncio.wait_for(h2.closed.wait(), DRAIN_TIME_S + 2.5)
            seen = _after(h2, t0)
            await h2.close()
            return seen, h2.statuses.get(1)
        return asyncio.run(story())


def test_lds_drain_end_closes_h2_without_a_last_goaway(tmp_path: Path) -> None:
    def story(kind: str) -> tuple[list[tuple[Any, ...]], str | None]:
        (tmp_path / kind).mkdir()
        return _removed_busy(kind, tmp_path / kind)
    seen = lp.each_kind(story)
    assert _shape(seen["remora"][0]) == _shape(seen["envoy"][0]), seen
    assert _shape(seen["envoy"][0]) == [("GOAWAY", LAST_STREAM, 0), ("GOAWAY", 1, 0), "closed"]
    for kind, (frames, status) in seen.items():
        assert status is None, kind  # the stream never answered
        closed_at = frames[-1][1]
        # closed when the drain time is over (remora sees the LDS file up to ~0.3 s late)
        assert DRAIN_TIME_S - 0.3 < closed_at < DRAIN_TIME_S + 1.2, (kind, frames)
        assert frames[1][0] < DRAIN_TIME_S + 0.3, (kind, frames)  # the GOAWAYs came before


def test_sigterm_closes_an_idle_h2_connection_silently(tmp_path: Path) -> None:
    def story(kind: str) -> list[tuple[Any, ...]]:
        (tmp_path / kind).mkdir()
        with _proxy(kind, tmp_path / kind) as p:
            async def run() -> list[tuple[Any, ...]]:
                h2 = await _served(p.port)
                t0 = time.monotonic()
                p.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(h2.closed.wait(), 5)
                seen = _after(h2, t0)
                await h2.close()
                return seen
            return asyncio.run(run())
    seen = lp.each_kind(story)
    assert _shape(seen["remora"]) == _shape(seen["envoy"]) == ["closed"], seen
