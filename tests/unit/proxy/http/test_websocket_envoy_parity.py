"""HTTP/1.1 websocket upgrades (upgrade_configs websocket) held to a real Envoy 1.40 on
loopback: the 101 head the client gets and the access-log line of each exchange.

Envoy's connection manager leaves an upstream 101 that is an upgrade (Connection naming
upgrade, and Upgrade) as the upstream wrote it: its ``connection: Upgrade`` line in place
and case; it adds no x-envoy-upstream-service-time to any response to an Upgrade request
(the request never ends: it goes on as the tunnel); a 101 that is not an upgrade loses its
Upgrade line and both connections close. A tunnel the client closes is logged DC
downstream_remote_disconnect, one the upstream closes UC
upstream_reset_after_response_started{connection_termination}.

One config (the reference sidecar HCM, its websocket upgrade_configs, a catch-all route to
a raw backend answering each path its own way), run once by `envoy` and once by `remora
proxy`, the same exchanges with both. Needs the envoy binary (marker `envoy`); no root,
loopback only."""

from __future__ import annotations

import copy
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import free_port, hcm_bootstrap, static_cluster

pytestmark = pytest.mark.envoy

_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\n"
# what the backend answers the Upgrade request for each path
HEADS = {
    "/echo": _SWITCH + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Accept: abc\r\nX-App: 1\r\n\r\n",
    "/upclose": _SWITCH + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye",
    "/multi": _SWITCH + b"Connection: keep-alive, Upgrade\r\nX-App: 1\r\n"
                        b"Upgrade: websocket\r\n\r\n",
    "/noconn": _SWITCH + b"Upgrade: websocket\r\nX-App: 1\r\n\r\n",
    "/svc": _SWITCH + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"x-envoy-upstream-service-time: 77\r\n\r\n",
    "/404": b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
}
REQUEST = (b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _serve(conn: socket.socket) -> None:
    """The backend, one connection: the path's answer; /echo then echoes until the
    proxy closes, /upclose and the others close after a moment."""
    conn.settimeout(5)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        path = buf.split(b" ", 2)[1].decode()
        conn.sendall(HEADS[path])
        if path == "/echo":
            while data := conn.recv(65536):
                conn.sendall(data)
        else:
            time.sleep(0.1 if path in ("/upclose", "/noconn", "/404") else 2)
    except OSError:
        return


def _until(s: socket.socket, done: Callable[[bytes], bool], timeout: float = 3) -> bytes:
    """What S receives until DONE says so, the proxy closes ("<EOF>") or TIMEOUT."""
    s.settimeout(timeout)
    out = b""
    try:
        while not done(out):
            chunk = s.recv(65536)
            if not chunk:
                return out + b"<EOF>"
            out += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        out += b"<EOF>"
    return out


def _exchange(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUEST % path.encode())
        if path == "/echo":  # the client sends, reads its echo and closes
            head = _until(s, lambda b: b"\r\n\r\n" in b)
            s.sendall(b"ping")
            return head + _until(s, lambda b: b.endswith(b"ping"))
        if path in ("/upclose", "/noconn"):  # the proxy closes
            return _until(s, lambda b: False)
        if path == "/404":
            return _until(s, lambda b: b.endswith(b"\r\n\r\nno"))
        return _until(s, lambda b: b"\r\n\r\n" in b)  # the head, then the client closes


@pytest.fixture(scope="module")
def outcomes(data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, dict[str, Any]]]:
    ref = json.loads((data_dir / "reference/envoy-sidecar/server-redirect.json").read_text())
    template = ref["static_resources"]["listeners"][0]["filter_chains"][1]["filters"][0]
    tmp = tmp_path_factory.mktemp("websocket")
    srv = lp.thread_server(_serve, threaded=True)
    try:
        found: dict[str, dict[str, Any]] = {}
        for kind in ph.KINDS:
            port, admin = free_port(), free_port()
            log = tmp / f"{kind}.log"
            hcm = copy.deepcopy(template)
            tc = hcm["typed_config"]
            assert tc["upgrade_configs"] == [{"upgrade_type": "websocket"}]
            tc["access_log"][0]["typed_config"]["path"] = str(log)
            tc["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "ws"
            cfg = tmp / f"{kind}.json"
            cfg.write_text(json.dumps(hcm_bootstrap(hcm, port, admin, [
                static_cluster("ws", srv.getsockname()[1])])))
            with lp.loopback_proxy(kind, cfg, port):
                heads = {}
                for path in HEADS:
                    got = _exchange(port, path)
                    for pattern, repl in lp.VOLATILE_MASKS:
                        got = re.sub(pattern, repl, got)
                    heads[path] = got
                found[kind] = {"heads": heads, "log": lp.wait_lines(log, len(HEADS))}
        yield found
    finally:
        srv.close()


@pytest.mark.parametrize("path", list(HEADS))
def test_client_bytes_same_as_envoy(outcomes: dict[str, dict[str, Any]], path: str) -> None:
    assert outcomes["remora"]["heads"][path] == outcomes["envoy"]["heads"][path]


def _by_path(lines: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for line in lines:
        f = ph.comparable(ph.parse_access_log(line))
        f.pop("downstream_local_address")  # the two listen on different ports
        f.pop("duration")  # the client's and the backend's pauses
        out[f["path"]] = f
    return out


@pytest.mark.parametrize("path", list(HEADS))
def test_access_log_same_as_envoy(outcomes: dict[str, dict[str, Any]], path: str) -> None:
    assert _by_path(outcomes["remora"]["log"])[path] == _by_path(outcomes["envoy"]["log"])[path]


def test_what_envoy_does(outcomes: dict[str, dict[str, Any]]) -> None:
    heads, log = outcomes["envoy"]["heads"], _by_path(outcomes["envoy"]["log"])
    assert heads["/echo"].startswith(
        _SWITCH + b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: abc\r\n")
    assert heads["/echo"].endswith(b"\r\n\r\nping")
    assert b"x-envoy-upstream-service-time" not in heads["/echo"]
    assert b"x-envoy-upstream-service-time: N" in heads["/svc"]  # the upstream's own
    assert heads["/noconn"].endswith(b"connection: close\r\n\r\n<EOF>")
    assert b"upgrade" not in heads["/noconn"]
    assert (log["/echo"]["response_flags"], log["/echo"]["response_code_details"]) == (
        "DC", "downstream_remote_disconnect")
    assert (log["/upclose"]["response_flags"], log["/upclose"]["response_code_details"]) == (
        "UC", "upstream_reset_after_response_started{connection_termination}")
