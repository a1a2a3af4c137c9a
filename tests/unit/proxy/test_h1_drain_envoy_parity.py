"""What a kept-alive HTTP/1.1 downstream connection sees of a drain when no response
starts on it, held to a real Envoy 1.40 on loopback (no root): the same bootstrap and
command line run by `envoy` and `remora proxy` side by side (server/drain.py says what
it is; test_h2_drain_envoy_parity.py is the HTTP/2 side).

- ``/drain_listeners?graceful`` (either --drain-strategy): an idle connection is closed
  unasked -- nothing sent, the EOF at a random moment in the last third of
  --drain-time-s plus the HCM's ``drain_timeout`` plus Envoy's delayed close (1 s), and
  counted as downstream_cx_drain_close and downstream_cx_delayed_close_timeout; one that
  never sent a byte is closed at that random moment itself; a request in flight meanwhile
  is finished with ``connection: close``, then the connection closes;
  an HCM whose ``drain_timeout`` is longer than a third of the drain time leaves its idle
  connections open (Envoy never tells them);
- the listener removed by LDS: its idle connections are closed the same way, or at the
  drain's end at the latest;
- a response the drain decision gives ``connection: close`` before the connection was
  told: the connection stays open, serves what comes meanwhile with ``connection:
  close``, and closes ``drain_timeout`` plus the delayed close after that response.

Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import addr, free_port, write_atomic

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
DRAIN_TIME_S = 3
QUICK = 0.2  # the "quick" listener's drain_timeout: fits in the drain's last third
SLOW = 1.3  # the "slow" one's: longer than a third of the drain time
DELAYED_CLOSE = 1.0  # Envoy's delayed_close_timeout default
ANSWER_AFTER = 3.4  # the slow upstream's answer, after the request: past the drain time
EARLY_ANSWER_AFTER = 1.0  # its answer to GET /early: before the drain's last third
IDLE = 4  # idle connections per listener
SILENT = 2  # connections that sent nothing


def _listener(name: str, port: int, drain_timeout: float) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": name, "codec_type": "AUTO",
           "drain_timeout": f"{drain_timeout}s",
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"path": "/slow"}, "route": {"cluster": "slow", "timeout": "0s"}},
               {"match": {"path": "/early"}, "route": {"cluster": "slow", "timeout": "0s"}},
               {"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    return {"name": name, "address": addr("127.0.0.1", port), "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}


def _lds(version: str, *listeners: dict[str, Any]) -> dict[str, Any]:
    return {"version_info": version,
            "resources": [{"@type": LISTENER, **lst} for lst in listeners]}


def _answer_late(conn: socket.socket) -> None:
    """The slow upstream: answers each request ANSWER_AFTER seconds after its head
    (EARLY_ANSWER_AFTER for GET /early)."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        time.sleep(EARLY_ANSWER_AFTER if head.startswith(b"GET /early ") else ANSWER_AFTER)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")


@dataclass
class Proxy:
    quick: int
    slow: int
    admin: int
    lds: Path

    def post(self, path: str) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def stats(self, prefix: str) -> dict[str, int]:
        text = lp.admin_text(self.admin, f"/stats?filter=^http\\.{prefix}\\.downstream_cx_")
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if name.endswith(("drain_close", "delayed_close_timeout", "destroy_local",
                              "destroy_remote", "_active")):
                out[name.rsplit(".", 1)[1]] = int(value)
        return out


@contextmanager
def _proxy(kind: str, tmp: Path, *extra: str) -> Iterator[Proxy]:
    upstream = lp.thread_server(_answer_late, threaded=True)
    try:
        p = Proxy(free_port(), free_port(), free_port(), tmp / f"{kind}-lds.json")
        write_atomic(p.lds, _lds("1", _listener("quick", p.quick, QUICK),
                                 _listener("slow", p.slow, SLOW)))
        boot = {"admin": {"address": addr("127.0.0.1", p.admin)},
                "node": {"id": "n", "cluster": "c"},
                "static_resources": {"clusters": [{
                    "name": "slow", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "slow", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": addr("127.0.0.1",
                                                      upstream.getsockname()[1])}}]}]}}]},
                "dynamic_resources": {"lds_config": {
                    "resource_api_version": "V3", "path_config_source": {"path": str(p.lds)}}}}
        cfg = tmp / f"{kind}.json"
        cfg.write_text(json.dumps(boot))
        with lp.loopback_proxy(kind, cfg, p.quick, p.slow,
                               args=["--drain-time-s", str(DRAIN_TIME_S), *extra]):
            yield p
    finally:
        upstream.close()


def _served(port: int) -> socket.socket:
    """A kept-alive connection whose one request (GET /) was answered: idle now."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    s.sendall(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert b"connection: close" not in data.lower(), data
    return s


def _watch(socks: list[socket.socket], t0: float, until: float) -> list[tuple[Any, ...]]:
    """Each of SOCKS until it closes or UNTIL (monotonic): ("eof", seconds after T0, the
    bytes received before), or ("open", None, the bytes received)."""
    seen: list[tuple[Any, ...] | None] = [None] * len(socks)
    data = [b""] * len(socks)
    for s in socks:
        s.settimeout(0.01)
    while time.monotonic() < until and None in seen:
        for i, s in enumerate(socks):
            if seen[i] is not None:
                continue
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                data[i] += chunk
            else:
                seen[i] = ("eof", round(time.monotonic() - t0, 2), data[i])
    return [e if e is not None else ("open", None, data[i]) for i, e in enumerate(seen)]


def _graceful(kind: str, tmp: Path, strategy: str) -> dict[str, Any]:
    with _proxy(kind, tmp, "--drain-strategy", strategy) as p:
        idle = [_served(p.quick) for _ in range(IDLE)]
        kept = [_served(p.slow) for _ in range(IDLE)]
        # connections that send nothing (Envoy has no codec for them yet)
        silent = [socket.create_connection(("127.0.0.1", p.quick)) for _ in range(SILENT)]
        kept.append(socket.create_connection(("127.0.0.1", p.slow)))
        busy = _served(p.quick)
        busy.sendall(b"GET /slow HTTP/1.1\r\nhost: app.test\r\n\r\n")
        time.sleep(0.2)  # the request is at the upstream, unanswered
        p.post("/drain_listeners?graceful")
        t0 = time.monotonic()
        socks = [*idle, busy, *silent, *kept]
        seen = _watch(socks, t0, t0 + DRAIN_TIME_S + QUICK + DELAYED_CLOSE + 1.5)
        out = {"idle": seen[:IDLE], "busy": seen[IDLE], "silent": seen[IDLE + 1:IDLE + 1 + SILENT],
               "kept": seen[IDLE + 1 + SILENT:],
               "quick": p.stats("quick"), "slow": p.stats("slow")}
        for s in socks:
            s.close()
        return out


@pytest.mark.parametrize("strategy", ["immediate", "gradual"])
def test_graceful_drain_closes_idle_http1_connections(tmp_path: Path, strategy: str) -> None:
    def story(kind: str) -> dict[str, Any]:
        (tmp_path / kind).mkdir()
        return _graceful(kind, tmp_path / kind, strategy)
    seen = lp.each_kind(story)
    for kind, s in seen.items():
        # the idle ones: closed with nothing sent, from the last third of the drain time
        # plus drain_timeout plus the delayed close on (give or take a loaded machine)
        earliest = DRAIN_TIME_S * 2 / 3 + QUICK + DELAYED_CLOSE
        latest = DRAIN_TIME_S + DELAYED_CLOSE
        for event, at, data in s["idle"]:
            assert event == "eof" and data == b"", (kind, s)
            assert earliest - 0.3 < at < latest + 0.6, (kind, s)
        # the one in flight: finished (its response after the drain timeout) with
        # connection: close, then closed
        event, at, data = s["busy"]
        assert event == "eof" and data.startswith(b"HTTP/1.1 200"), (kind, s)
        assert b"\r\nconnection: close\r\n" in data and data.endswith(b"slow"), (kind, s)
        # one that never sent a byte: closed at once when told (no drain_timeout, no
        # delayed close)
        for event, at, data in s["silent"]:
            assert event == "eof" and data == b"", (kind, s)
            assert DRAIN_TIME_S * 2 / 3 - 0.3 < at < DRAIN_TIME_S - QUICK + 0.5, (kind, s)
        # the HCM whose drain_timeout does not fit in the last third: never told
        assert [e[:2] for e in s["kept"]] == [("open", None)] * (IDLE + 1), (kind, s)
    for name in ("quick", "slow"):
        assert seen["remora"][name] == seen["envoy"][name], seen
    # one drain close per connection, the idle ones through the delayed close's timeout
    assert seen["envoy"]["quick"]["downstream_cx_drain_close"] == IDLE + 1 + SILENT, seen
    assert seen["envoy"]["slow"]["downstream_cx_drain_close"] == 0, seen


def test_lds_removal_closes_idle_http1_connections(tmp_path: Path) -> None:
    def story(kind: str) -> tuple[list[tuple[Any, ...]], int]:
        (tmp_path / kind).mkdir()
        with _proxy(kind, tmp_path / kind, "--drain-strategy", "gradual") as p:
            idle = [_served(p.quick) for _ in range(IDLE)]
            write_atomic(p.lds, _lds("2", _listener("slow", p.slow, SLOW)))
            t0 = time.monotonic()
            # the removed listener's stats go with it at the drain's end (Envoy): read
            # as the connections are watched, the last count read before is what counts
            # (each proxy's drain starts when it read the file: remora up to ~0.3 s late)
            seen: list[tuple[Any, ...]] = [("open", None, b"")] * IDLE
            drained = 0
            while time.monotonic() < t0 + DRAIN_TIME_S + 2:
                rest = [i for i, e in enumerate(seen) if e[0] == "open"]
                if not rest:
                    break
                later = _watch([idle[i] for i in rest], t0, time.monotonic() + 0.1)
                for i, e in zip(rest, later, strict=True):
                    seen[i] = e
                with contextlib.suppress(KeyError, OSError):  # (gone with the listener)
                    drained = max(drained, p.stats("quick")["downstream_cx_drain_close"])
            for s in idle:
                s.close()
            return seen, drained
    seen = lp.each_kind(story)
    for kind, (events, drained) in seen.items():
        # all told (each closed unasked, or when the drain time is over at the latest:
        # remora sees the LDS file up to ~0.3 s late)
        assert drained == IDLE, (kind, seen)
        for event, at, data in events:
            assert event == "eof" and data == b"", (kind, seen)
            assert DRAIN_TIME_S * 2 / 3 + QUICK - 0.3 < at < DRAIN_TIME_S + 0.8, (kind, seen)


def _read_until(s: socket.socket, t0: float, until: float) -> tuple[bytes, float | None]:
    """What S receives until it closes (and when, seconds after T0) or UNTIL."""
    data = b""
    s.settimeout(0.01)
    while time.monotonic() < until:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            return data, round(time.monotonic() - t0, 2)
        data += chunk
    return data, None


def test_drain_decided_at_a_response_keeps_the_connection_for_drain_timeout(
        tmp_path: Path) -> None:
    """A response the drain decision gives connection: close (--drain-strategy
    immediate, the response before the drain's last third) starts the connection's drain
    sequence (Envoy's encodeHeaders: startDrainSequence): Envoy 1.40 keeps the
    connection open, serves a request sent meanwhile (with connection: close again), and
    closes it drain_timeout plus the delayed close (1 s) after that response; remora
    closed it right after the response."""
    def story(kind: str) -> dict[str, Any]:
        (tmp_path / kind).mkdir()
        with _proxy(kind, tmp_path / kind, "--drain-strategy", "immediate") as p:
            busy = _served(p.quick)
            busy.sendall(b"GET /early HTTP/1.1\r\nhost: app.test\r\n\r\n")
            time.sleep(0.2)  # the request is at the upstream, unanswered
            p.post("/drain_listeners?graceful")
            t0 = time.monotonic()
            first = b""
            busy.settimeout(EARLY_ANSWER_AFTER + 2)
            while not first.endswith(b"slow"):
                chunk = busy.recv(65536)
                assert chunk, (kind, first)
                first += chunk
            answered = time.monotonic() - t0
            time.sleep(0.1)
            busy.sendall(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
            second, closed = _read_until(busy, t0, t0 + answered + QUICK + DELAYED_CLOSE + 1.5)
            busy.close()
            return {"first": first, "answered": answered, "second": second,
                    "closed": closed, "quick": p.stats("quick")}
    seen = lp.each_kind(story)
    for kind, s in seen.items():
        assert b"\r\nconnection: close\r\n" in s["first"], (kind, s)
        # the request sent after it: served, with connection: close
        assert s["second"].startswith(b"HTTP/1.1 200"), (kind, s)
        assert b"\r\nconnection: close\r\n" in s["second"], (kind, s)
        assert s["second"].endswith(b"\r\n\r\nok"), (kind, s)
        # closed drain_timeout plus the delayed close after the first response
        assert s["closed"] is not None, (kind, s)
        after = s["closed"] - s["answered"]
        assert QUICK + DELAYED_CLOSE - 0.3 < after < QUICK + DELAYED_CLOSE + 0.5, (kind, s)
    assert seen["remora"]["quick"] == seen["envoy"]["quick"], seen
