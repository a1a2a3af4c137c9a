"""IPv6 and dual stack through a sidecar: `remora proxy` and the real Envoy on the same
dual-stack config, behind Istio's IPv6 capture rules.

The seed's topology with a second family: client 10.20.0.78 + fd00:10:20::78, server
10.20.0.77 + fd00:10:20::77 (ULA /64 on the veth). The capture is remora's own
istio-iptables with ``--dual-stack`` (ip6tables with ::1 / ::6, ``::6`` on lo, and for
TPROXY the IPv6 policy route ``fwmark 1337 lookup 133`` / ``local ::/0 dev lo``). The
sidecar config is what remora's control plane generates for the seed's pods with both
addresses (Istio's dual stack: 0.0.0.0 + [::] listeners, 127.0.0.6 + ::6 binds), as one
static bootstrap, and both proxies run that same file.

Observed per scenario: what the seed's server app prints as RemoteAddr, the plain TCP
peer the app sees through the passthrough chain, each access-log line field by field
(Istio's format; ephemeral ports, times and ids reduced to their shape), and the admin
/listeners lines. The seed's question over IPv6: REDIRECT gives ``[::6]:PORT``, TPROXY
the client's IPv6 address; over IPv4 on the same dual-stack config, 127.0.0.6.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from remora.capture import apply
from remora.controlplane.generate import generate, static_bootstrap
from tests import proxyharness as ph
from tests.lab import CLIENT_IP, SERVER_IP, Lab, Namespace
from tests.netns.capture_helpers import injector_config
from tests.unit.controlplane.seed import CLIENT_IP6, SERVER_IP6, dual, v6_only

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

BODY = '{"code": 0, "status": "fail", "user": {"id": "test_common"}}'
TCP_PORT = 9000
# Not HTTP from the first byte, and no FIN before the reply: the generated virtualInbound
# sniffs with http_inspector, and a FIN arriving while it inspects closes the connection
# (downstream_listener_filter_remote_close) on both proxies.
TCP_PAYLOAD = b"\x00ping"


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # REDIRECT / TPROXY on the server
    family: int  # the family the client dials the server with
    app_source: str  # what the app must see as the client's address
    mesh: bool = False  # a client sidecar too
    ipv6_only: bool = False  # the pods' config from their IPv6 addresses alone

    @property
    def server_ip(self) -> str:
        return SERVER_IP6 if self.family == socket.AF_INET6 else SERVER_IP

    @property
    def client_ip(self) -> str:
        return CLIENT_IP6 if self.family == socket.AF_INET6 else CLIENT_IP


SCENARIOS = {s.name: s for s in (
    Scenario("redirect-v6", "REDIRECT", socket.AF_INET6, "::6"),
    Scenario("tproxy-v6", "TPROXY", socket.AF_INET6, CLIENT_IP6),
    Scenario("redirect-v4-dual", "REDIRECT", socket.AF_INET, "127.0.0.6"),
    Scenario("mesh-redirect-v6", "REDIRECT", socket.AF_INET6, "::6", mesh=True),
    Scenario("tproxy-ipv6-only", "TPROXY", socket.AF_INET6, CLIENT_IP6, ipv6_only=True),
)}


def _join(ip: str, port: int | str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class Observation:
    client_output: list[str]
    app_lines: list[str]  # RemoteAddr values, port masked
    app_output: list[str]  # the app's whole lines (X-Forwarded-For too), ports masked
    tcp_reply: bytes
    tcp_peers: list[str]
    access_log: list[dict[str, str]]
    client_access_log: list[dict[str, str]]
    admin_listeners: list[str]


def add_ipv6(lab: Lab, ns: Namespace, ip: str) -> None:
    # nodad: usable at once (no duplicate address detection wait on a private veth)
    lab.run(ns, ["ip", "-6", "addr", "add", f"{ip}/64", "dev", "eth0", "nodad"])


def capture(ns: Namespace, mode: str) -> None:
    outcome = apply.apply(injector_config(mode, "--dual-stack"), ns.path)
    assert outcome.action == "applied", outcome


def write_configs(workdir: Path, tproxy: bool, ipv6_only: bool) -> tuple[Path, Path]:
    """The control plane's dual-stack (or IPv6-only) config for the seed's server and
    client pods."""
    snap, server, client = v6_only(tproxy) if ipv6_only else dual(tproxy)
    paths = []
    for pod, ip in ((server, SERVER_IP6 if ipv6_only else SERVER_IP),
                    (client, CLIENT_IP6 if ipv6_only else CLIENT_IP)):
        cfg = generate(snap, pod, ip, str(workdir / pod.metadata.name))
        path = workdir / f"{pod.metadata.name}.json"
        path.write_text(json.dumps(static_bootstrap(cfg)))
        paths.append(path)
    return paths[0], paths[1]


def _tcp_pong(conn: socket.socket) -> None:
    got = b""
    while len(got) < len(TCP_PAYLOAD):
        data = conn.recv(64)
        if not data:
            break
        got += data
    conn.sendall(b"pong:" + got)


def observe(kind: str, sc: Scenario, workdir: Path) -> Observation:
    workdir.mkdir(parents=True, exist_ok=True)
    server_cfg, client_cfg = write_configs(workdir, sc.mode == "TPROXY", sc.ipv6_only)
    with Lab(prefix="rp6") as lab:
        client, server = lab.pair()
        add_ipv6(lab, client, CLIENT_IP6)
        add_ipv6(lab, server, SERVER_IP6)
        app = ph.start_app(lab, server, workdir)  # all families, like Go's ":18080"
        pong = ph.PeerServer(server, TCP_PORT, _tcp_pong, ip="::")  # dual-stack socket
        capture(server, sc.mode)
        sidecar = ph.start_sidecar(lab, server, kind, server_cfg, workdir)
        client_sidecar = None
        if sc.mesh:
            capture(client, "REDIRECT")
            client_sidecar = ph.start_sidecar(lab, client, kind, client_cfg, workdir)
        try:
            url = f"http://{_join(sc.server_ip, 18080)}/common/sauth"
            client_output = ph.run_client(lab, client, url, 3)
            tcp = Lab.socket(client, sc.family)
            tcp.settimeout(10)
            tcp.connect((sc.server_ip, TCP_PORT))
            tcp.sendall(TCP_PAYLOAD)  # no FIN before the reply: the sniffer decides first
            tcp_reply = ph.recv_all(tcp)
            tcp.close()
            log = sidecar.wait_access_log(4)
            lines = app.wait_lines(3)
            listeners = sidecar.admin_get("/listeners")[1].decode().splitlines()
            client_log = client_sidecar.wait_access_log(4) if client_sidecar else []
        finally:
            pong.close()
            sidecar.stop()
            if client_sidecar is not None:
                client_sidecar.stop()
        assert not pong.errors, pong.errors
    remote = [line.split("RemoteAddr=", 1)[1] for line in lines]
    return Observation(
        client_output=client_output,
        app_lines=[ph._strip_port(r) for r in remote],
        app_output=[re.sub(r":\d+$", ":*", line) for line in lines],
        tcp_reply=tcp_reply,
        tcp_peers=[p[0].removeprefix("::ffff:") for p in pong.peers],
        access_log=[ph.comparable(ph.parse_access_log(x)) for x in log],
        client_access_log=[ph.comparable(ph.parse_access_log(x)) for x in client_log],
        admin_listeners=sorted(listeners),
    )


_observed: ph.OncePerSession[Observation] = ph.OncePerSession()


def observation(kind: str, sc: Scenario, factory: pytest.TempPathFactory) -> Observation:
    return _observed.get(kind, sc.name,
                         lambda: observe(kind, sc, factory.mktemp(f"{kind}-{sc.name}")))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kind", ph.KINDS)
def test_app_sees_the_family_answer(kind: str, scenario: str,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """The seed's question per family: ::6 / 127.0.0.6 in REDIRECT, the client's own
    address in TPROXY; the access log in Envoy's address forms."""
    sc = SCENARIOS[scenario]
    obs = observation(kind, sc, tmp_path_factory)
    assert obs.client_output == [BODY] * 3, obs.client_output
    assert obs.app_lines == [f"{_join(sc.app_source, '*')}"] * 3, obs.app_lines
    assert obs.tcp_reply == b"pong:" + TCP_PAYLOAD
    assert obs.tcp_peers == [sc.app_source], obs.tcp_peers
    assert len(obs.access_log) == 4, obs.access_log
    for line in obs.access_log[:3]:
        assert (line["response_code"], line["upstream_cluster"]) == ("200", "inbound|18080||")
        assert line["upstream_host"] == _join(sc.server_ip, 18080)
        assert line["upstream_local_address"] == _join(sc.app_source, "*")
        assert line["downstream_local_address"] == _join(sc.server_ip, 18080)
        # through a client sidecar the server still sees the client pod's address
        assert line["downstream_remote_address"] == _join(sc.client_ip, "*")
    tcp_line = obs.access_log[3]
    assert tcp_line["upstream_cluster"] == "InboundPassthroughCluster"
    assert tcp_line["upstream_host"] == _join(sc.server_ip, TCP_PORT)
    assert tcp_line["upstream_local_address"] == _join(sc.app_source, "*")
    assert tcp_line["downstream_local_address"] == _join(sc.server_ip, TCP_PORT)
    assert tcp_line["downstream_remote_address"] == _join(sc.client_ip, "*")
    assert "virtualInbound::[::]:15006" in obs.admin_listeners
    assert ("virtualInbound::0.0.0.0:15006" in obs.admin_listeners) is not sc.ipv6_only
    if sc.mesh:
        # The client dials the server pod's address, not the service's: virtualOutbound
        # hands the connection to no service listener ([fd00:10:20::77]:18080 has none,
        # and the sniffed service port listens on its cluster IPs only), so the catch-all
        # passes each connection through -- one line per connection, keep-alive included.
        assert len(obs.client_access_log) == 2, obs.client_access_log
        assert {x["upstream_cluster"] for x in obs.client_access_log} == {"PassthroughCluster"}
        assert {x["upstream_local_address"] for x in obs.client_access_log} == \
            {_join(sc.client_ip, "*")}
        assert {x["upstream_host"] for x in obs.client_access_log} == \
            {_join(sc.server_ip, 18080), _join(sc.server_ip, TCP_PORT)}


@pytest.mark.parametrize("aspect", ["access_log", "client_access_log", "admin_listeners",
                                    "app_view"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_remora_same_as_envoy_over_ipv6(scenario: str, aspect: str,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    sc = SCENARIOS[scenario]
    ours = observation("remora", sc, tmp_path_factory)
    theirs = observation("envoy", sc, tmp_path_factory)
    if aspect in ("access_log", "client_access_log"):
        mine_lines, envoy_lines = getattr(ours, aspect), getattr(theirs, aspect)
        assert len(mine_lines) == len(envoy_lines)
        for i, (mine, envoys) in enumerate(zip(mine_lines, envoy_lines, strict=True)):
            if aspect == "client_access_log" and mine["upstream_host"].endswith(":18080"):
                # the client's passthrough carries the server sidecar's responses, whose
                # x-envoy-upstream-service-time value (ms) has a timing-dependent width
                mine, envoys = dict(mine), dict(envoys)
                for count in (mine, envoys):
                    count["bytes_sent"] = "N" if count["bytes_sent"].isdigit() else "-"
            differing = {k: (mine.get(k), v) for k, v in envoys.items() if mine.get(k) != v}
            assert not differing, f"line {i}: field: (remora, envoy): {differing}"
    elif aspect == "admin_listeners":
        assert ours.admin_listeners == theirs.admin_listeners
    else:
        assert (ours.app_output, ours.tcp_peers, ours.tcp_reply) == \
            (theirs.app_output, theirs.tcp_peers, theirs.tcp_reply)
