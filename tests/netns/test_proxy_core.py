"""`remora proxy` as the server sidecar in the seed's two namespaces, with Istio's capture
rules applied by iptables-restore: tcp_proxy-only server config (the reference config with
its http_connection_manager replaced by a tcp_proxy to the same cluster).

- REDIRECT: the app sees the sidecar's 127.0.0.6 bind; TPROXY + original_src: it sees the
  client pod's 10.20.0.78.
- The Istio access-log line carries the seed's five-tuple fields.
- /config_dump parses in Envoy's layout.
- LDS reload keeps an established connection; a bad LDS file is refused and the old
  config keeps serving.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import CLIENT_IP, SERVER_IP, Lab, Namespace
from tests.unit.proxy.test_config_loading import tcp_only

pytestmark = pytest.mark.netns

APP = r"""
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(64)
def serve(conn, peer):
    conn.sendall(f"RemoteAddr={peer[0]}:{peer[1]}\n".encode())
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.close()
while True:
    c, p = srv.accept()
    threading.Thread(target=serve, args=(c, p), daemon=True).start()
"""


def sidecar_config(data_dir: Path, mode: str, log: Path) -> dict[str, Any]:
    name = "server-tproxy.json" if mode == "TPROXY" else "server-redirect.json"
    doc = tcp_only(json.loads((data_dir / "reference/envoy-sidecar" / name).read_text()))
    inbound = doc["static_resources"]["listeners"][0]
    fmt = copy.deepcopy(inbound["filter_chains"][2]["filters"][0]["typed_config"]["access_log"])
    fmt[0]["typed_config"]["path"] = str(log)
    inbound["filter_chains"][1]["filters"][0]["typed_config"]["access_log"] = fmt
    return doc


def apply_capture(lab: Lab, ns: Namespace, data_dir: Path, mode: str) -> None:
    rules = (data_dir / "reference/envoy-sidecar" / f"{mode.lower()}.rules").read_bytes()
    lab.run(ns, ["iptables-restore"], input=rules)
    if mode == "TPROXY":  # istio-iptables' policy routing for marked packets
        lab.run(ns, ["ip", "-4", "rule", "add", "fwmark", "1337", "lookup", "133"])
        lab.run(ns, ["ip", "-4", "route", "add", "local", "default", "dev", "lo", "table", "133"])


def start_proxy(lab: Lab, ns: Namespace, config: Path, out: Path) -> None:
    with out.open("wb") as fh:
        proc = lab.spawn(ns, [sys.executable, "-m", "remora", "proxy", "-c", str(config),
                              "--group", "1337"], stdout=fh, stderr=fh)
    try:
        lab.wait_port(ns, "127.0.0.1", 15000)
    except AssertionError:
        proc.poll()
        raise AssertionError(f"proxy did not start: {out.read_text()[-2000:]}") from None


def admin_get(ns: Namespace, path: str) -> tuple[int, bytes]:
    sock = Lab.socket(ns)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", 15000))
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def stats(ns: Namespace) -> dict[str, int]:
    out = {}
    for line in admin_get(ns, "/stats")[1].decode().splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


class Conn:
    """A client connection from the client namespace to the server pod's app port."""

    def __init__(self, client: Namespace, port: int = 18080) -> None:
        self.sock = Lab.socket(client)
        self.sock.settimeout(5)
        self.sock.connect((SERVER_IP, port))
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline().decode().strip()

    def echo(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.file.readline().decode().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def pod(lab: Lab) -> Iterator[tuple[Lab, Namespace, Namespace]]:
    client, server = lab.pair()
    for port in ("18080", "9000"):
        lab.spawn(server, [sys.executable, "-c", APP, port])
        lab.wait_port(server, SERVER_IP, int(port))
    yield lab, client, server


def wait_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} access log lines in {path}")


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_app_sees_the_address_the_seed_explains(
    pod: tuple[Lab, Namespace, Namespace], data_dir: Path, tmp_path: Path, mode: str,
) -> None:
    lab, client, server = pod
    log = tmp_path / "access.log"
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(sidecar_config(data_dir, mode, log)))
    apply_capture(lab, server, data_dir, mode)
    start_proxy(lab, server, config, tmp_path / "proxy.out")

    conn = Conn(client)
    seen_ip, seen_port = conn.greeting.removeprefix("RemoteAddr=").rsplit(":", 1)
    assert seen_ip == ("127.0.0.6" if mode == "REDIRECT" else CLIENT_IP)
    assert conn.echo("hello through the sidecar") == "hello through the sidecar"
    client_port = conn.sock.getsockname()[1]
    conn.close()

    (line,) = wait_lines(log, 1)
    f = line.split(" ")
    # ... "UPSTREAM_HOST" UPSTREAM_CLUSTER_RAW UPSTREAM_LOCAL_ADDRESS DOWNSTREAM_LOCAL_ADDRESS
    #     DOWNSTREAM_REMOTE_ADDRESS REQUESTED_SERVER_NAME ROUTE_NAME
    assert f[-7:] == [f'"{SERVER_IP}:18080"', "inbound|18080||", f"{seen_ip}:{seen_port}",
                      f"{SERVER_IP}:18080", f"{CLIENT_IP}:{client_port}", "-", "-"]
    assert f[1:4] == ['"-', "-", '-"'] and f[4] == "0" and f[5] == "-"  # TCP, no flags
    rx, tx = int(f[9]), int(f[10])
    assert rx == len("hello through the sidecar\n")
    assert tx == len(conn.greeting) + 1 + rx

    status, body = admin_get(server, "/config_dump")
    assert status == 200
    dump = json.loads(body)
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    names = [x["listener"]["name"] for x in listeners["static_listeners"]]
    assert names == ["virtualInbound", "virtualOutbound"]
    clusters = next(c for c in dump["configs"] if c["@type"].endswith("ClustersConfigDump"))
    inbound = next(c["cluster"] for c in clusters["static_clusters"]
                   if c["cluster"]["name"] == "inbound|18080||")
    assert inbound["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"
    s = stats(server)
    assert s["cluster.inbound|18080||.upstream_cx_total"] == 1
    assert s["listener.0.0.0.0_15006.downstream_cx_total"] == 1


def test_lds_reload_keeps_connection_and_bad_update_is_refused(
    pod: tuple[Lab, Namespace, Namespace], data_dir: Path, tmp_path: Path,
) -> None:
    lab, client, server = pod
    log = tmp_path / "access.log"
    doc = sidecar_config(data_dir, "REDIRECT", log)
    listeners = doc["static_resources"].pop("listeners")
    lds = tmp_path / "lds.json"

    def write_lds(version: str, items: list[dict[str, Any]]) -> None:
        tmp = lds.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version_info": version, "resources": [
            {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **x}
            for x in items]}))
        os.replace(tmp, lds)  # atomic, as the control plane writes it

    write_lds("1", listeners)
    doc["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds)},
                                               "resource_api_version": "V3"}}
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(doc))
    apply_capture(lab, server, data_dir, "REDIRECT")
    start_proxy(lab, server, config, tmp_path / "proxy.out")

    old = Conn(client)
    assert old.echo("before") == "before"
    changed = copy.deepcopy(listeners)
    changed[0]["filter_chains"][1]["filters"][0]["typed_config"]["stat_prefix"] = "v2"
    write_lds("2", changed)
    deadline = time.monotonic() + 5
    while stats(server).get("listener_manager.lds.update_success", 0) < 2:
        assert time.monotonic() < deadline, "LDS update not applied"
        time.sleep(0.1)
    assert old.echo("after reload") == "after reload"
    new = Conn(client)
    assert new.echo("new") == "new"
    assert stats(server)["tcp.v2.downstream_cx_total"] == 1

    bad = copy.deepcopy(changed)
    bad[0]["filter_chains"][1]["filters"][0]["typed_config"]["not_a_field"] = True
    write_lds("3", bad)
    deadline = time.monotonic() + 5
    while stats(server).get("listener_manager.lds.update_rejected", 0) < 1:
        assert time.monotonic() < deadline, "bad LDS update not rejected"
        time.sleep(0.1)
    third = Conn(client)
    assert third.echo("still served") == "still served"
    assert old.echo("old still open") == "old still open"
    assert stats(server)["tcp.v2.downstream_cx_total"] == 2
    _status, body = admin_get(server, "/config_dump")
    listeners_dump = next(c for c in json.loads(body)["configs"]
                          if c["@type"].endswith("ListenersConfigDump"))
    assert listeners_dump["version_info"] == "2"
    for c in (old, new, third):
        c.close()
    assert "not_a_field" in (tmp_path / "proxy.out").read_text()


def test_missing_net_admin_is_one_clear_line(data_dir: Path, tmp_path: Path) -> None:
    # capsh drops CAP_NET_ADMIN from the bounding set for the child only.
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(sidecar_config(data_dir, "TPROXY", tmp_path / "a.log")))
    if shutil.which("capsh") is None:
        pytest.skip("capsh not installed")
    result = subprocess.run(
        ["capsh", "--drop=cap_net_admin", "--", "-c",
         f"{sys.executable} -m remora proxy -c {config} --mode validate"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("remora: error: listener 'virtualInbound'")
    assert "CAP_NET_ADMIN" in lines[-1]


def test_client_sidecar_hands_off_by_original_destination(
    pod: tuple[Lab, Namespace, Namespace], data_dir: Path, tmp_path: Path,
) -> None:
    """The client sidecar (REDIRECT on OUTPUT): virtualOutbound :15001 with
    use_original_dst hands 10.20.0.77:18080 to the bind_to_port: false listener
    0.0.0.0_18080 (its chain -> the STATIC outbound cluster); another port goes through
    the catch-all chain to the ORIGINAL_DST PassthroughCluster."""
    lab, client, _server = pod
    doc = tcp_only(json.loads((data_dir / "reference/envoy-sidecar/client-redirect.json")
                              .read_text()))
    config = tmp_path / "client-sidecar.json"
    config.write_text(json.dumps(doc))
    apply_capture(lab, client, data_dir, "REDIRECT")
    start_proxy(lab, client, config, tmp_path / "proxy.out")

    svc = Conn(client)  # the app dials the service directly; capture sends it to :15001
    assert svc.greeting.startswith(f"RemoteAddr={CLIENT_IP}:")
    assert svc.echo("via outbound") == "via outbound"
    other = Conn(client, 9000)
    assert other.greeting.startswith(f"RemoteAddr={CLIENT_IP}:")
    assert other.echo("passthrough") == "passthrough"
    svc.close()
    other.close()
    s = stats(client)
    outbound = "outbound|18080||srv.default.svc.cluster.local"
    assert s[f"tcp.{outbound}.downstream_cx_total"] == 1
    assert s[f"cluster.{outbound}.upstream_cx_total"] == 1
    assert s["listener.0.0.0.0_18080.downstream_cx_total"] == 1
    assert s["tcp.PassthroughCluster.downstream_cx_total"] == 1
    assert s["cluster.PassthroughCluster.upstream_cx_total"] == 1
    assert s["listener.0.0.0.0_15001.downstream_cx_total"] == 1
