"""/drain_listeners and open HTTP connections, held to a real Envoy 1.40 on loopback (no
root): the same bootstrap and command line run by `envoy` and by `remora proxy`, the same
client actions, and what the client sees compared (server/drain.py says what it is).

- without ``graceful``: the listener stops accepting; a keep-alive HTTP/1.1 connection and
  an h2c connection go on being served, told nothing;
- ``?graceful`` with ``--drain-strategy immediate``: the next HTTP/1.1 response carries
  ``connection: close`` and the connection closes; on h2c the next response is preceded by
  a GOAWAY with last stream id 2^31-1, the final GOAWAY (last stream 3) follows
  ``drain_timeout`` later, then the connection closes; the listener accepts until
  ``--drain-time-s`` is over;
- ``?inboundonly&graceful``: only the INBOUND listener's connections are drained.

Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import asyncio
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
from tests.unit.proxy.http2.raw_h2 import RawH2
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DRAIN_TIMEOUT = 0.6
DRAIN_TIME_S = 15  # longer than a story, so the listener still accepts at its end


def _listener(name: str, port: int, direction: str) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": name, "codec_type": "AUTO",
           "drain_timeout": f"{DRAIN_TIMEOUT}s",
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    return {"name": name, "traffic_direction": direction,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.http_connection_manager",
                 "typed_config": hcm}]}]}


@dataclass
class Proxy:
    inbound: int
    outbound: int
    admin: int

    def post(self, path: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)

    def accepts(self, port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False


@contextmanager
def _proxy(kind: str, tmp: Path, *extra: str) -> Iterator[Proxy]:
    p = Proxy(free_port(), free_port(), free_port())
    boot = {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": p.admin}}},
            "static_resources": {"listeners": [_listener("in", p.inbound, "INBOUND"),
                                               _listener("out", p.outbound, "OUTBOUND")]}}
    cfg = tmp / f"{kind}.json"
    cfg.write_text(json.dumps(boot))
    with lp.loopback_proxy(kind, cfg, p.inbound, p.outbound, args=extra):
        yield p


def _h1(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(3)
    return s


def _h1_exchange(s: socket.socket) -> tuple[bytes, bool]:
    """One keep-alive request: the response head and whether the proxy then closed the
    connection (EOF within 3 s)."""
    s.sendall(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    try:
        closed = s.recv(4096) == b""
    except TimeoutError:
        closed = False
    head = data.split(b"\r\n\r\n")[0]
    return head, closed


def _has_close(head: bytes) -> bool:
    return b"\r\nconnection: close" in head.lower()


async def _drain_story(p: Proxy, query: str, port: int) -> dict[str, Any]:
    """On PORT: a served HTTP/1.1 and h2c connection, then POST /drain_listeners?QUERY,
    then one more request on each; what the client saw."""
    h1 = _h1(port)
    head1, closed1 = await asyncio.to_thread(_h1_exchange, h1)
    assert not _has_close(head1) and not closed1
    h2 = await RawH2.connect(port)
    h2.request(1)
    for _ in range(100):
        if 1 in h2.statuses:
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(p.post, f"/drain_listeners{query}") == 200
    t0 = h2.now()
    await asyncio.sleep(0.2)
    head2, closed2 = await asyncio.to_thread(_h1_exchange, h1)
    h1.close()
    before_3 = h2.goaways()  # none: an idle connection is not told
    h2.request(3)
    await asyncio.sleep(DRAIN_TIMEOUT + 0.5)
    h2.request(5)
    await asyncio.sleep(1.5)
    out = {"h1_close_header": _has_close(head2), "h1_closed": closed2,
           "h2_goaways_while_idle": before_3, "h2_status_3": h2.statuses.get(3),
           "h2_status_5": h2.statuses.get(5), "h2_closed": h2.closed.is_set(),
           "h2_goaways": [(lsid, code) for _, lsid, code in h2.goaways()],
           "h2_goaway_gap": None}
    g = h2.goaways()
    if len(g) == 2:
        out["h2_goaway_gap"] = round(g[1][0] - g[0][0], 1)
        assert g[0][0] >= t0
    await h2.close()
    return out


def _run_both(tmp: Path, query: str, which: str, *extra: str) -> dict[str, Any]:
    """The story told to Envoy and remora side by side (it is mostly waiting)."""
    def story(kind: str) -> dict[str, Any]:
        with _proxy(kind, tmp, *extra) as p:
            port = p.inbound if which == "in" else p.outbound
            seen = asyncio.run(_drain_story(p, query, port))
            seen["accepts_after"] = p.accepts(port)
            return seen
    return lp.each_kind(story)


def test_plain_drain_leaves_open_connections(tmp_path: Path) -> None:
    seen = _run_both(tmp_path, "", "in")
    if seen["envoy"]["h2_goaways"] and not seen["remora"]["h2_goaways"]:
        # Twice, on a loaded 2-core machine (a full unit run beside other work), Envoy 1.40
        # answered a plain drain's h2c connection with the graceful sequence (GOAWAY
        # 2^31-1, then the last stream) and closed it; it never did on an idle machine.
        # The cause is not pinned down (its gradual drain decision is random), so Envoy's
        # story is told once more before the two are compared
        with _proxy("envoy", tmp_path) as p:
            seen["envoy"] = asyncio.run(_drain_story(p, "", p.inbound))
            seen["envoy"]["accepts_after"] = p.accepts(p.inbound)
    assert seen["remora"] == seen["envoy"], seen
    s = seen["remora"]
    assert not s["h1_close_header"] and not s["h1_closed"]
    assert s["h2_goaways"] == [] and s["h2_status_3"] == "200" and s["h2_status_5"] == "200"
    assert not s["accepts_after"]


def test_graceful_immediate_drains_http1_and_h2c(tmp_path: Path) -> None:
    seen = _run_both(tmp_path, "?graceful", "in", "--drain-strategy", "immediate",
                     "--drain-time-s", str(DRAIN_TIME_S))
    assert seen["remora"] == seen["envoy"], seen
    s = seen["remora"]
    assert s["h1_close_header"] and s["h1_closed"]
    assert s["h2_goaways_while_idle"] == []
    # graceful GOAWAY, stream 3 still served, final GOAWAY naming it drain_timeout later,
    # stream 5 (after it) never answered, then the connection closed
    assert s["h2_goaways"] == [(2**31 - 1, 0), (3, 0)]
    assert s["h2_goaway_gap"] == DRAIN_TIMEOUT
    assert s["h2_status_3"] == "200" and s["h2_status_5"] is None and s["h2_closed"]
    assert s["accepts_after"]  # until --drain-time-s is over


def test_graceful_listener_stops_after_drain_time(tmp_path: Path) -> None:
    def story(kind: str) -> None:
        with _proxy(kind, tmp_path, "--drain-strategy", "immediate",
                    "--drain-time-s", "1") as p:
            assert p.post("/drain_listeners?graceful") == 200
            assert p.accepts(p.inbound), kind
            time.sleep(1.8)
            assert not p.accepts(p.inbound) and not p.accepts(p.outbound), kind
    lp.each_kind(story)


@pytest.mark.parametrize("which", ["in", "out"])
def test_graceful_inbound_only(tmp_path: Path, which: str) -> None:
    seen = _run_both(tmp_path, "?graceful&inboundonly", which, "--drain-strategy",
                     "immediate", "--drain-time-s", str(DRAIN_TIME_S))
    assert seen["remora"] == seen["envoy"], seen
    assert seen["remora"]["h1_close_header"] is (which == "in")
