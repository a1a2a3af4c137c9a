"""`remora proxy` held to a real Envoy on the three reference sidecar configs.

Each scenario builds the seed's topology (client 10.20.0.78, server 10.20.0.77), applies
the reference capture rules, starts one sidecar on an unchanged reference bootstrap and
sends the same traffic: the seed's demo client (three GETs on one keep-alive
connection), a raw request that takes another route or path, and a plain TCP exchange
that takes the catch-all tcp_proxy chain. What is observed:

- what the server app sees as the client address (the seed's question),
- the exact response bytes (Date and x-envoy-upstream-service-time values masked),
- every access-log line, field by field, minus timestamps/durations/ids/ephemeral ports,
- the counters of the chosen filter chain (each chain's filter has its own stat_prefix)
  and of the chosen cluster, and the listener/cluster names in /config_dump.

`test_seed_facts` asserts the seed's facts on both proxies (on Envoy it proves the
harness); `test_remora_same_as_envoy` compares remora's observation with Envoy's, one
aspect per test so a report names exactly what differs.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import proxyharness as ph
from tests.lab import CLIENT_IP, SERVER_IP, Lab, Namespace

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

SAUTH_URL = f"http://{SERVER_IP}:18080/common/sauth"
BODY = '{"code": 0, "status": "fail", "user": {"id": "test_common"}}'
TCP_PORT = 9000


@dataclass
class Scenario:
    name: str
    config: str  # file in the reference folder
    capture_on: str  # "server" or "client": where the sidecar and its rules live
    mode: str  # redirect / tproxy
    raw_request: bytes  # second HTTP exchange, Connection: close
    app_source: str  # the client address the app must see (the seed's point)
    http_cluster: str
    raw_cluster: str
    tcp_cluster: str
    upstream_local_ip: str  # UPSTREAM_LOCAL_ADDRESS's IP in the HTTP lines
    # a client sidecar too (the seed's full path: client pod -> server pod, both meshed)
    client_config: str | None = None


SCENARIOS = {
    "server-redirect": Scenario(
        "server-redirect", "server-redirect.json", "server", "redirect",
        b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "127.0.0.6", "inbound|18080||", "inbound|18080||", "InboundPassthroughCluster",
        "127.0.0.6"),
    "server-tproxy": Scenario(
        "server-tproxy", "server-tproxy.json", "server", "tproxy",
        b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        CLIENT_IP, "inbound|18080||", "inbound|18080||", "InboundPassthroughCluster",
        CLIENT_IP),
    "client-redirect": Scenario(
        "client-redirect", "client-redirect.json", "client", "redirect",
        b"GET /common/sauth HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
        CLIENT_IP, "outbound|18080||srv.default.svc.cluster.local", "PassthroughCluster",
        "PassthroughCluster", CLIENT_IP),
    "mesh-redirect": Scenario(
        "mesh-redirect", "server-redirect.json", "server", "redirect",
        b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "127.0.0.6", "inbound|18080||", "inbound|18080||", "InboundPassthroughCluster",
        "127.0.0.6", client_config="client-redirect.json"),
}
CLIENT_SIDE_CLUSTERS = ["outbound|18080||srv.default.svc.cluster.local"] * 3 + \
    ["PassthroughCluster", "PassthroughCluster"]


@dataclass
class Observation:
    client_output: list[str]
    raw_response: bytes
    tcp_reply: bytes
    app_sources: list[str]  # "ip" of each printed RemoteAddr, then the TCP peer's ip
    app_ports_reused: bool  # the three keep-alive GETs reached the app on one connection
    app_lines: list[str]  # what the seed's server printed, ports masked
    access_log: list[dict[str, str]]
    counters: dict[str, int | None]
    dump_names: dict[str, list[str]]
    # mesh scenario only: the client sidecar's lines and counters, and whether each
    # request kept its x-request-id across the two sidecars
    client_access_log: list[dict[str, str]]
    client_counters: dict[str, int | None]
    same_request_ids: list[bool]
    admin_listeners: str  # GET /listeners
    admin_clusters: list[str]  # GET /clusters lines


def _mask(raw: bytes) -> bytes:
    raw = re.sub(rb"(?im)^(date: ).*$", rb"\1<date>\r", raw)
    return re.sub(rb"(?im)^(x-envoy-upstream-service-time: )\d+\r$", rb"\1<n>\r", raw)


def _tcp_pong(conn: socket.socket) -> None:
    conn.sendall(b"pong:" + ph.recv_all(conn))


def _interesting_counters(config: dict[str, Any]) -> list[str]:
    """Per-chain counters (by each chain filter's stat_prefix) and per-cluster counters."""
    names: list[str] = []
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                prefix = flt["typed_config"]["stat_prefix"]
                if flt["name"].endswith("tcp_proxy"):
                    names.append(f"tcp.{prefix}.downstream_cx_total")
                else:
                    names += [f"http.{prefix}.downstream_rq_total",
                              f"http.{prefix}.downstream_rq_2xx",
                              f"http.{prefix}.downstream_rq_4xx"]
    for cluster in config["static_resources"]["clusters"]:
        names += [f"cluster.{cluster['name']}.upstream_cx_total",
                  f"cluster.{cluster['name']}.upstream_rq_total"]
    return sorted(set(names))


def _dump_names(dump: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for section in dump.get("configs", []):
        kind = section.get("@type", "").rsplit(".", 1)[-1]
        if kind == "ListenersConfigDump":
            out["listeners"] = sorted(x["listener"]["name"]
                                      for x in section.get("static_listeners", []))
        elif kind == "ClustersConfigDump":
            out["clusters"] = sorted(x["cluster"]["name"]
                                     for x in section.get("static_clusters", []))
    return out


def observe(kind: str, sc: Scenario, workdir: Path) -> Observation:
    config_path = ph.REFERENCE / sc.config
    config = json.loads(config_path.read_text())
    with Lab(prefix="rpe") as lab:
        client, server = lab.pair()
        app = ph.start_app(lab, server, workdir)
        pong = ph.PeerServer(server, TCP_PORT, _tcp_pong)
        sidecar_ns: Namespace = server if sc.capture_on == "server" else client
        ph.apply_capture(lab, sidecar_ns, sc.mode)
        sidecar = ph.start_sidecar(lab, sidecar_ns, kind, config_path, workdir)
        client_sidecar = None
        if sc.client_config:
            ph.apply_capture(lab, client, "redirect")
            client_sidecar = ph.start_sidecar(lab, client, kind, ph.REFERENCE / sc.client_config,
                                              workdir)
        try:
            client_output = ph.run_client(lab, client, SAUTH_URL, 3)
            raw = ph.http_exchange(client, SERVER_IP, 18080, sc.raw_request)
            tcp = ph.Lab.socket(client)
            tcp.settimeout(10)
            tcp.connect((SERVER_IP, TCP_PORT))
            tcp.sendall(b"ping")
            tcp.shutdown(socket.SHUT_WR)
            tcp_reply = ph.recv_all(tcp)
            tcp.close()
            expected_lines = 3 + 1 + 1
            log = sidecar.wait_access_log(expected_lines)
            lines = app.wait_lines(3 + (b" /common/sauth " in sc.raw_request))
            counters_all = sidecar.stats()
            dump = sidecar.config_dump()
            admin_listeners = sidecar.admin_get("/listeners")[1].decode()
            admin_clusters = sidecar.admin_get("/clusters")[1].decode().splitlines()
            client_log: list[str] = []
            client_counters: dict[str, int | None] = {}
            if client_sidecar is not None and sc.client_config:
                client_log = client_sidecar.wait_access_log(expected_lines)
                client_stats = client_sidecar.stats()
                client_config = json.loads((ph.REFERENCE / sc.client_config).read_text())
                client_counters = {k: client_stats.get(k)
                                   for k in _interesting_counters(client_config)}
        finally:
            pong.close()
            sidecar.stop()
            if client_sidecar is not None:
                client_sidecar.stop()
        assert not pong.errors, pong.errors
    remote = [line.split("RemoteAddr=", 1)[1] for line in lines]
    server_ids = [ph.parse_access_log(x)["request_id"] for x in log]
    client_ids = [ph.parse_access_log(x)["request_id"] for x in client_log]
    return Observation(
        client_output=client_output,
        raw_response=_mask(raw),
        tcp_reply=tcp_reply,
        app_sources=[r.rsplit(":", 1)[0] for r in remote] + [p[0] for p in pong.peers],
        app_ports_reused=len(set(remote[:3])) == 1,
        app_lines=[re.sub(r":\d+$", ":*", line) for line in lines],
        access_log=[ph.comparable(ph.parse_access_log(x)) for x in log],
        counters={k: counters_all.get(k) for k in _interesting_counters(config)},
        dump_names=_dump_names(dump),
        client_access_log=[ph.comparable(ph.parse_access_log(x)) for x in client_log],
        client_counters=client_counters,
        same_request_ids=[a == b for a, b in zip(server_ids, client_ids, strict=False)],
        admin_listeners=admin_listeners,
        admin_clusters=[x for x in admin_clusters if x],
    )


def check_seed_facts(obs: Observation, sc: Scenario) -> None:
    """What the seed and the reference README say a sidecar on this config does."""
    assert obs.client_output == [BODY] * 3, obs.client_output
    assert obs.tcp_reply == b"pong:ping", obs.tcp_reply
    assert set(obs.app_sources) == {sc.app_source}, obs.app_sources
    assert obs.app_ports_reused, obs  # keep-alive downstream, pooled upstream
    # the seed's listing: `X-Forwarded-For=, RemoteAddr=127.0.0.6:44213` (XFF untouched)
    assert set(obs.app_lines) == {f"X-Forwarded-For=, RemoteAddr={sc.app_source}:*"}, \
        obs.app_lines
    assert len(obs.access_log) == 5, obs.access_log
    http, raw_line, tcp_line = obs.access_log[:3], obs.access_log[3], obs.access_log[4]
    for line in http:
        assert (line["method"], line["path"], line["protocol"]) == ("GET", "/common/sauth",
                                                                    "HTTP/1.1")
        assert (line["response_code"], line["response_flags"],
                line["response_code_details"]) == ("200", "-", "via_upstream")
        assert (line["bytes_received"], line["bytes_sent"]) == ("0", "60")
        assert line["user_agent"] == "Go-http-client/1.1"
        assert line["request_id"] == "uuid"
        assert line["upstream_cluster"] == sc.http_cluster
        assert line["upstream_host"] == f"{SERVER_IP}:18080"
        assert line["upstream_local_address"] == f"{sc.upstream_local_ip}:*"
        assert line["downstream_local_address"] == f"{SERVER_IP}:18080"
        assert line["downstream_remote_address"] == f"{CLIENT_IP}:*"
        assert line["route_name"] == "default"
    assert raw_line["upstream_cluster"] == sc.raw_cluster
    assert tcp_line["upstream_cluster"] == sc.tcp_cluster
    assert (tcp_line["method"], tcp_line["protocol"], tcp_line["response_code"]) == \
        ("-", "-", "0")
    assert (tcp_line["bytes_received"], tcp_line["bytes_sent"]) == ("4", "9")
    assert tcp_line["upstream_host"] == f"{SERVER_IP}:{TCP_PORT}"
    assert tcp_line["downstream_local_address"] == f"{SERVER_IP}:{TCP_PORT}"
    for name in (sc.http_cluster, sc.tcp_cluster):
        assert obs.counters[f"cluster.{name}.upstream_cx_total"], name
    if sc.client_config:
        assert [x["upstream_cluster"] for x in obs.client_access_log] == CLIENT_SIDE_CLUSTERS
        # the client sidecar connects from the pod IP; the server sidecar sees that
        assert {x["upstream_local_address"] for x in obs.client_access_log} == {f"{CLIENT_IP}:*"}


_observed: ph.OncePerSession[Observation] = ph.OncePerSession()


def observation(kind: str, sc: Scenario, factory: pytest.TempPathFactory) -> Observation:
    return _observed.get(kind, sc.name,
                         lambda: observe(kind, sc, factory.mktemp(f"{kind}-{sc.name}")))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kind", ph.KINDS)
def test_seed_facts(kind: str, scenario: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The app's view of the client, the clusters taken, keep-alive reuse, the log lines."""
    sc = SCENARIOS[scenario]
    check_seed_facts(observation(kind, sc, tmp_path_factory), sc)


ASPECTS = ("response_bytes", "access_log", "chain_and_cluster_counters", "config_dump_names",
           "admin_listeners_and_clusters")


def _cluster_lines(lines: list[str]) -> tuple[set[str], set[str]]:
    """/clusters as (every `name::[host::]field` key, the cluster-level lines in full).
    Host lines carry traffic counters, so only their keys are compared."""
    keys, settings = set(), set()
    for line in lines:
        key = line.rsplit("::", 1)[0]
        keys.add(key)
        if not re.match(r"^[^:]+(\|[^:]*)*::\d+\.\d+\.\d+\.\d+:\d+::", line):
            settings.add(line)
    return keys, settings


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_remora_same_as_envoy(scenario: str, aspect: str,
                              tmp_path_factory: pytest.TempPathFactory) -> None:
    sc = SCENARIOS[scenario]
    ours = observation("remora", sc, tmp_path_factory)
    theirs = observation("envoy", sc, tmp_path_factory)
    if aspect == "response_bytes":
        assert ours.raw_response == theirs.raw_response
        assert ours.tcp_reply == theirs.tcp_reply
    elif aspect == "access_log":
        assert len(ours.access_log) == len(theirs.access_log)
        for i, (mine, envoys) in enumerate(zip(ours.access_log, theirs.access_log, strict=True)):
            differing = {k: (mine.get(k), v) for k, v in envoys.items() if mine.get(k) != v}
            assert not differing, f"line {i}: field: (remora, envoy): {differing}"
    elif aspect == "chain_and_cluster_counters":
        differing = {k: (ours.counters[k], v) for k, v in theirs.counters.items()
                     if ours.counters[k] != v}
        assert not differing, f"counter: (remora, envoy): {differing}"
    elif aspect == "config_dump_names":
        assert ours.dump_names == theirs.dump_names
    else:
        # Envoy lists listeners in its own map order; the set of lines is what matters
        assert sorted(ours.admin_listeners.splitlines()) == \
            sorted(theirs.admin_listeners.splitlines())
        (our_keys, our_settings) = _cluster_lines(ours.admin_clusters)
        (their_keys, their_settings) = _cluster_lines(theirs.admin_clusters)
        missing, extra = sorted(their_keys - our_keys), sorted(our_keys - their_keys)
        assert not missing, f"/clusters fields missing in remora: {missing}"
        assert not extra, f"/clusters fields Envoy does not have: {extra}"
        differ = sorted(their_settings - our_settings)
        assert not differ, f"/clusters cluster-level lines differ (Envoy's): {differ}"
    if sc.client_config and aspect == "access_log":
        for i, (mine, envoys) in enumerate(zip(ours.client_access_log, theirs.client_access_log,
                                               strict=True)):
            differing = {k: (mine.get(k), v) for k, v in envoys.items() if mine.get(k) != v}
            assert not differing, f"client sidecar line {i}: (remora, envoy): {differing}"
        assert ours.same_request_ids == theirs.same_request_ids, "x-request-id propagation"
    if sc.client_config and aspect == "chain_and_cluster_counters":
        differing = {k: (ours.client_counters[k], v) for k, v in theirs.client_counters.items()
                     if ours.client_counters[k] != v}
        assert not differing, f"client sidecar counter: (remora, envoy): {differing}"


# -- what the app receives -----------------------------------------------------------------
UPSTREAM_PROBES = [
    # the seed's client, as Go writes it
    f"GET /common/sauth HTTP/1.1\r\nHost: {SERVER_IP}:18080\r\n"
    "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n".encode(),
    # XFF from the client (Istio's sidecar leaves it as it is), a custom header, a
    # chunked body, and a hop-by-hop header that must not reach the app
    f"POST /common/sauth?q=1 HTTP/1.1\r\nHost: {SERVER_IP}:18080\r\n"
    "X-Forwarded-For: 192.0.2.1\r\nX-Custom: a b\r\nTransfer-Encoding: chunked\r\n"
    "Keep-Alive: timeout=5\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode(),
]
CANNED = (b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\nContent-Type: text/plain; "
          b"charset=utf-8\r\n\r\n" + BODY.encode())


def _record_requests(seen: list[bytes]) -> Callable[[socket.socket], None]:
    """App stand-in on :18080 that keeps the exact bytes of each request it receives."""

    def handler(conn: socket.socket) -> None:
        buf = b""
        while chunk := conn.recv(65536):
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                if b"transfer-encoding: chunked" in head.lower():
                    if b"0\r\n\r\n" not in rest:
                        break
                    body, _, buf = rest.partition(b"0\r\n\r\n")
                    seen.append(head + b"\r\n\r\n" + body + b"0\r\n\r\n")
                else:
                    length = re.search(rb"(?im)^content-length:\s*(\d+)\r?$", head)
                    size = int(length.group(1)) if length else 0
                    if len(rest) < size:
                        break
                    seen.append(head + b"\r\n\r\n" + rest[:size])
                    buf = rest[size:]
                conn.sendall(CANNED)

    return handler


def _mask_request(raw: bytes) -> bytes:
    return re.sub(rb"(?im)^(x-request-id: )[0-9a-f-]{36}\r$", rb"\1<uuid>\r", raw)


def observe_upstream_requests(kind: str, sc: Scenario, workdir: Path) -> list[bytes]:
    seen: list[bytes] = []
    with Lab(prefix="rpu") as lab:
        client, server = lab.pair()
        app = ph.PeerServer(server, 18080, _record_requests(seen))
        try:
            ns = server if sc.capture_on == "server" else client
            ph.apply_capture(lab, ns, sc.mode)
            ph.start_sidecar(lab, ns, kind, ph.REFERENCE / sc.config, workdir)
            if sc.client_config:
                ph.apply_capture(lab, client, "redirect")
                ph.start_sidecar(lab, client, kind, ph.REFERENCE / sc.client_config, workdir)
            sock = Lab.socket(client)
            sock.settimeout(10)
            sock.connect((SERVER_IP, 18080))
            for probe in UPSTREAM_PROBES:
                sock.sendall(probe)
                reply = b""
                while not reply.endswith(BODY.encode()):
                    chunk = sock.recv(65536)
                    assert chunk, f"{kind}: connection closed before the answer"
                    reply += chunk
            sock.close()
        finally:
            app.close()
        assert not app.errors, app.errors
    return [_mask_request(x) for x in seen]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_app_receives_the_same_request_bytes(scenario: str, tmp_path: Path) -> None:
    """The request as the app gets it: header order and case, added headers (x-request-id,
    x-forwarded-proto, x-envoy-*), XFF left alone, hop-by-hop headers removed, body
    framing."""
    sc = SCENARIOS[scenario]
    theirs = observe_upstream_requests("envoy", sc, tmp_path / "envoy")
    assert len(theirs) == len(UPSTREAM_PROBES), theirs
    assert b"\r\nx-forwarded-for: 192.0.2.1\r\n" in theirs[1].lower()
    ours = observe_upstream_requests("remora", sc, tmp_path / "remora")
    for i, (mine, envoys) in enumerate(zip(ours, theirs, strict=True)):
        assert mine == envoys, f"request {i}:\nremora:\n{mine.decode()}\nenvoy:\n{envoys.decode()}"


@pytest.mark.parametrize("mode", ["redirect", "tproxy"])
@pytest.mark.parametrize("kind", ph.KINDS)
def test_connection_to_15006_takes_the_blackhole_chain(kind: str, mode: str,
                                                       tmp_path: Path) -> None:
    """A connection whose original destination is the inbound port itself matches the
    `destination_port: 15006` chain and is closed by BlackHoleCluster, unlogged: the
    guard that keeps the sidecar from looping into itself (reference README)."""
    with Lab(prefix="rpb") as lab:
        client, server = lab.pair()
        ph.apply_capture(lab, server, mode)
        sidecar = ph.start_sidecar(lab, server, kind, ph.REFERENCE / f"server-{mode}.json",
                                   tmp_path)
        sock = Lab.socket(client)
        sock.settimeout(5)
        sock.connect((SERVER_IP, 15006))
        with contextlib.suppress(OSError):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            got = ph.recv_all(sock)
        except ConnectionResetError:
            got = b""
        sock.close()
        assert got == b""
        deadline = time.monotonic() + 5
        while (stats := sidecar.stats()).get("tcp.BlackHoleCluster.downstream_cx_total") != 1:
            assert time.monotonic() < deadline, {k: v for k, v in stats.items()
                                                 if "BlackHole" in k}
            time.sleep(0.05)
        assert stats.get("cluster.BlackHoleCluster.upstream_cx_total") == 0
        assert stats.get("cluster.BlackHoleCluster.upstream_cx_none_healthy") == 1
        assert sidecar.access_log() == []


OTHER_CLIENT_IP = "10.20.0.79"


def _get_from(ns: Namespace, source: str) -> bytes:
    sock = Lab.socket(ns)
    sock.settimeout(5)
    try:
        sock.bind((source, 0))
        sock.connect((SERVER_IP, 18080))
        sock.sendall(b"GET /common/sauth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return ph.recv_all(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["redirect", "tproxy"])
@pytest.mark.parametrize("kind", ph.KINDS)
def test_upstream_pool_reuse_across_clients(kind: str, mode: str, tmp_path: Path) -> None:
    """REDIRECT: the server sidecar serves two clients over one pooled connection to the
    app (both from 127.0.0.6). TPROXY: original_src binds each upstream connection to the
    client's address, so a pooled connection is only reused for that same address and
    the app sees each client as itself (reference README)."""
    with Lab(prefix="rpp") as lab:
        client, server = lab.pair()
        lab.run(client, ["ip", "addr", "add", f"{OTHER_CLIENT_IP}/24", "dev", "eth0"])
        app = ph.start_app(lab, server, tmp_path)
        ph.apply_capture(lab, server, mode)
        sidecar = ph.start_sidecar(lab, server, kind, ph.REFERENCE / f"server-{mode}.json",
                                   tmp_path)
        for i, source in enumerate((CLIENT_IP, OTHER_CLIENT_IP, CLIENT_IP)):
            assert _get_from(client, source).endswith(BODY.encode())
            if i == 0:  # reuse is what Envoy guarantees once the host is in the cluster
                ph.wait_host_added(sidecar, "inbound|18080||", f"{SERVER_IP}:18080")
        remotes = [x.split("RemoteAddr=", 1)[1] for x in app.wait_lines(3)]
    assert len(remotes) == 3, remotes
    if mode == "redirect":
        assert len(set(remotes)) == 1 and remotes[0].startswith("127.0.0.6:"), remotes
    else:
        ips = [r.rsplit(":", 1)[0] for r in remotes]
        assert ips == [CLIENT_IP, OTHER_CLIENT_IP, CLIENT_IP], remotes
        assert remotes[0] == remotes[2], remotes  # same source again: the pooled one


CONFIGS = sorted([*ph.DATA.glob("*.json"), *(ph.REFERENCE / n for n in (
    "server-redirect.json", "server-tproxy.json", "client-redirect.json"))])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("kind", ph.KINDS)
def test_configs_validate(kind: str, config: Path) -> None:
    """Every bootstrap these suites run is accepted by `--mode validate` of both proxies
    (the extra ones in tests/data/proxy/ are the reference config with one field changed)."""
    argv = ([ph.envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"]
            if kind == "envoy" else
            [sys.executable, "-m", "remora", "proxy", "--mode", "validate", "-c", str(config)])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]


# -- HTTP edge cases through the inbound HCM ------------------------------------------------
EDGE_PROBES = {
    "http10": b"GET /common/sauth HTTP/1.0\r\nHost: x\r\n\r\n",
    "head": b"HEAD /common/sauth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "dot-segments": b"GET /common/./x/../sauth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "absolute-form": b"GET http://x/common/sauth?a=1 HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n",
    "expect-100": b"POST /common/sauth HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\nhi",
    "xff-and-te": b"GET /common/sauth HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.7\r\n"
                  b"TE: trailers\r\nConnection: close\r\n\r\n",
    "no-host": b"GET /common/sauth HTTP/1.1\r\nConnection: close\r\n\r\n",
}


def observe_edges(kind: str, workdir: Path) -> dict[str, tuple[bytes, list[bytes],
                                                              dict[str, str] | None]]:
    out: dict[str, tuple[bytes, list[bytes], dict[str, str] | None]] = {}
    with Lab(prefix="rpx") as lab:
        client, server = lab.pair()
        seen: list[bytes] = []
        app = ph.PeerServer(server, 18080, _record_requests(seen))
        try:
            ph.apply_capture(lab, server, "redirect")
            sidecar = ph.start_sidecar(lab, server, kind, ph.REFERENCE / "server-redirect.json",
                                       workdir)
            for name, probe in EDGE_PROBES.items():
                before_log, before_seen = len(sidecar.access_log()), len(seen)
                raw = ph.http_exchange(client, SERVER_IP, 18080, probe, timeout=5)
                lines = sidecar.wait_access_log(before_log + 1, timeout=3)[before_log:]
                time.sleep(0.05)
                out[name] = (
                    _mask(raw), [_mask_request(x) for x in seen[before_seen:]],
                    ph.comparable(ph.parse_access_log(lines[0])) if lines else None)
        finally:
            app.close()
    return out


@pytest.mark.parametrize("probe", list(EDGE_PROBES))
def test_http_edge_cases_same_as_envoy(probe: str,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """HTTP/1.0, HEAD, path normalisation, absolute-form, Expect: 100-continue, XFF and
    TE, a missing Host: the response, what reaches the app and the log line."""
    runs = {kind: _edges.get(kind, "edges",
                             lambda k=kind: observe_edges(k, tmp_path_factory.mktemp(k)))
            for kind in ph.KINDS}
    ours, theirs = runs["remora"][probe], runs["envoy"][probe]
    assert ours[0] == theirs[0], f"response:\nremora: {ours[0]!r}\nenvoy:  {theirs[0]!r}"
    assert ours[1] == theirs[1], f"request at the app:\nremora: {ours[1]!r}\nenvoy:  {theirs[1]!r}"
    assert (ours[2] is None) == (theirs[2] is None), (ours[2], theirs[2])
    if ours[2] is not None and theirs[2] is not None:
        differing = {k: (ours[2].get(k), v) for k, v in theirs[2].items()
                     if ours[2].get(k) != v}
        assert not differing, f"access-log field: (remora, envoy): {differing}"


_edges: ph.OncePerSession[dict[str, tuple[bytes, list[bytes], dict[str, str] | None]]] = (
    ph.OncePerSession())
