"""http2_protocol_options.connection_keepalive held to a real Envoy 1.40 on loopback (no
root), the same bootstrap run by `envoy` and `remora proxy`:

- downstream (the HCM's options): PINGs every interval (jitter 0) while the client ACKs
  them, the connection stays; a client that never ACKs is cut off interval + timeout after
  the start, with http2.keepalive_timeout counted;
- upstream (the cluster's options): a raw h2 upstream that takes the request and never
  answers nor ACKs the PING: the request ends 503 with flag UC (connection termination)
  and cluster.<name>.http2.keepalive_timeout is counted.

Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hyperframe.frame as hf
import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http2.raw_h2 import RawH2
from tests.unit.proxy.http2.upstream_setup import HCM, cluster, h2_options
from tests.unit.proxy.proxy_helpers import free_port

pytestmark = pytest.mark.envoy

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
KEEPALIVE = {"interval": "0.3s", "timeout": "0.4s", "interval_jitter": {"value": 0}}


def _bootstrap(port: int, admin: int, upstream: int, log: Path) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "ka", "codec_type": "AUTO",
           "http2_protocol_options": {"connection_keepalive": KEEPALIVE},
           "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
               "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
                   "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}],
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/up"}, "route": {"cluster": "h2up", "timeout": "5s"}},
               {"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "l", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm}]}]}],
                "clusters": [cluster("h2up", upstream, typed_extension_protocol_options=(
                    h2_options(connection_keepalive=KEEPALIVE)))]}}


def _silent_h2_upstream() -> tuple[socket.socket, list[float]]:
    """An HTTP/2 server that sends its SETTINGS, ACKs the client's, and then answers
    nothing: no response, no PING ACK. The list gets the arrival of each PING."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    pings: list[float] = []

    def handle(conn: socket.socket) -> None:
        conn.sendall(hf.SettingsFrame(0).serialize())
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            if buf.startswith(b"PRI"):
                buf = buf[24:] if len(buf) >= 24 else buf
            while len(buf) >= 9 and not buf.startswith(b"PRI"):
                f, n = hf.Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + n:
                    break
                f.parse_body(memoryview(buf[9:9 + n]))
                buf = buf[9 + n:]
                if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
                    ack = hf.SettingsFrame(0)
                    ack.flags.add("ACK")
                    conn.sendall(ack.serialize())
                elif isinstance(f, hf.PingFrame) and "ACK" not in f.flags:
                    pings.append(time.monotonic())

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, pings


@contextmanager
def _proxy(kind: str, tmp: Path, upstream: int) -> Iterator[tuple[int, int, Path]]:
    port, admin = free_port(), free_port()
    log = tmp / f"{kind}.log"
    cfg = tmp / f"{kind}.json"
    cfg.write_text(json.dumps(_bootstrap(port, admin, upstream, log)))
    with cfg.with_suffix(".err").open("wb") as err:
        proc = subprocess.Popen(ph.sidecar_argv(kind, cfg), stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        lp.wait_listening(port, proc, kind)
        yield port, admin, log
    finally:
        lp.stop(proc)


def _stat(admin: int, name: str) -> int:
    text = lp.admin_text(admin, f"/stats?filter=^{name}$")
    for line in text.splitlines():
        n, _, v = line.partition(": ")
        if n == name:
            return int(v)
    return 0


async def _downstream(port: int, ack: bool) -> tuple[int, bool, float | None]:
    c = await RawH2.connect(port, ack_pings=ack)
    c.request(1)
    await asyncio.sleep(1.5)
    out = (len(c.pings()), c.closed.is_set(), c.closed_at)
    await c.close()
    return out


def test_downstream_keepalive(tmp_path: Path) -> None:
    srv, _ = _silent_h2_upstream()
    try:
        for kind in ("envoy", "remora"):
            with _proxy(kind, tmp_path, srv.getsockname()[1]) as (port, admin, _):
                pings, closed, _at = asyncio.run(_downstream(port, ack=True))
                assert 4 <= pings <= 5 and not closed, (kind, pings, closed)
                pings, closed, at = asyncio.run(_downstream(port, ack=False))
                assert pings == 1 and closed and at is not None, (kind, pings, closed)
                assert 0.6 <= at <= 1.0, (kind, at)  # interval 0.3 + timeout 0.4
                assert _stat(admin, "http2.keepalive_timeout") == 1, kind
    finally:
        srv.close()


def test_upstream_keepalive_timeout(tmp_path: Path) -> None:
    srv, pings = _silent_h2_upstream()
    try:
        for kind in ("envoy", "remora"):
            pings.clear()
            with _proxy(kind, tmp_path, srv.getsockname()[1]) as (port, admin, log):
                s = socket.create_connection(("127.0.0.1", port))
                s.settimeout(5)
                t0 = time.monotonic()
                s.sendall(b"GET /up HTTP/1.1\r\nhost: app.test\r\n\r\n")
                head = s.recv(4096)
                took = time.monotonic() - t0
                s.close()
                assert head.startswith(b"HTTP/1.1 503"), (kind, head)
                assert 0.6 <= took <= 1.2, (kind, took)
                assert len(pings) == 1, kind
                assert _stat(admin, "cluster.h2up.http2.keepalive_timeout") == 1, kind
                assert lp.wait_lines(log, 1) == ["503 UC"], kind
    finally:
        srv.close()


def test_connection_idle_interval_refused(tmp_path: Path) -> None:
    from remora.proxy.config.strict import ConfigError, Fields
    from remora.proxy.http2.options import UPSTREAM_FIELDS, parse_http2_options
    for accepted in (UPSTREAM_FIELDS, None):
        raw = {"connection_keepalive": {**KEEPALIVE, "connection_idle_interval": "1s"}}
        with pytest.raises(ConfigError, match=r"connection_keepalive\.connection_idle_interval"):
            if accepted is None:
                parse_http2_options(Fields(raw, "h2"))
            else:
                parse_http2_options(Fields(raw, "h2"), accepted)
    opts = parse_http2_options(Fields({"connection_keepalive": KEEPALIVE}, "h2"))
    assert (opts.keepalive_interval, opts.keepalive_timeout, opts.keepalive_jitter) == \
        (0.3, 0.4, 0.0)
    with pytest.raises(ConfigError, match=r"connection_keepalive\.timeout"):
        parse_http2_options(Fields({"connection_keepalive": {"interval": "1s"}}, "h2"))
