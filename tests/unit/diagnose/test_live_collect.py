"""The live collector's decisions that need no lab: which endpoint served the probe, and
what the live report adds to the core's (pods without a sidecar, the app's own line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remora.diagnose.envoy.access_log import parse_access_log
from remora.diagnose.evidence import lab as live
from remora.diagnose.evidence.files import add_iptables
from remora.diagnose.evidence.lab import LiveRun, pick_server
from remora.diagnose.evidence.lab_counters import complete_tables
from remora.diagnose.evidence.lab_probe import ProbeResult
from remora.diagnose.evidence.target import Destination, LabPod
from remora.diagnose.iptables.model import Ruleset
from remora.diagnose.source_ip.evidence import Evidence

RID = "4acb991e-9d9e-47f5-b2dc-6860b9aa4598"


def line(cluster: str, upstream_host: str, local: str) -> str:
    return (f'[2026-11-23T23:57:01.293Z] "GET /common/sauth HTTP/1.1" 200 - via_upstream - "-" '
            f'0 60 5 5 "-" "remora-explain-probe/{RID}" "{RID}" '
            f'"simple-server-svc.demo-to:18080" "{upstream_host}" {cluster} {local} '
            f"10.20.0.77:18080 10.20.0.78:35016 - default")


class FakeNode:
    """The one NodeClient call the log search makes."""

    def __init__(self, logs: dict[str, str]) -> None:
        self.texts = logs
        self.asked: list[str] = []

    def logs(self, namespace: str, pod: str, container: str | None = None,
             previous: bool = False, tail: int | None = None) -> dict[str, Any]:
        self.asked.append(pod)
        return {"text": self.texts.get(pod, ""), "path": ""}


def pod(name: str, ip: str, sidecar: bool = True) -> LabPod:
    return LabPod(name, "demo-to", ip, f"x-{name}", sidecar, "demo")


def test_the_endpoint_named_by_the_client_log_is_the_server() -> None:
    a, b = pod("server-a", "10.20.0.77"), pod("server-b", "10.20.0.79")
    dest = Destination("service", "simple-server-svc", "demo-to", "172.16.1.170", 18080,
                       "simple-server-svc.demo-to:18080", [a, b])
    c_entries = parse_access_log(line("outbound|18080||simple-server-svc.demo-to.svc."
                                      "cluster.local", "10.20.0.79:18080", "10.20.0.78:1"))
    node = FakeNode({"server-b": line("inbound|18080||", "10.20.0.79:18080",
                                      "127.0.0.6:2") + "\n"})
    notes: list[str] = []
    server, entries = pick_server(node, dest, c_entries, RID, 0.5, notes)  # type: ignore[arg-type]
    assert server is b and entries[0].upstream_local_address == "127.0.0.6:2"
    assert node.asked == ["server-b"] and notes == []


def test_without_a_client_line_the_server_that_logged_it_is_found() -> None:
    a, b = pod("server-a", "10.20.0.77"), pod("server-b", "10.20.0.79")
    dest = Destination("service", "s", "demo-to", "172.16.1.170", 18080, "s.demo-to:18080",
                       [a, b])
    node = FakeNode({"server-b": line("inbound|18080||", "10.20.0.79:18080", "127.0.0.6:2")})
    server, entries = pick_server(node, dest, [], RID, 0.4, [])  # type: ignore[arg-type]
    assert server is b and len(entries) == 1


def _run(data: Path, server_sidecar: bool, app_line: str) -> LiveRun:
    ev = Evidence()
    client, server = pod("simple-client", "10.20.0.78"), pod("plain-0", "10.20.0.77",
                                                              server_sidecar)
    add_iptables(ev.client, data / "seed_redirect_nat.txt")
    ev.client.ip, ev.server.ip = client.ip, server.ip
    ev.server.iptables = complete_tables(Ruleset(origin="iptables-save -c (empty)"))
    ev.server.app_log.append(app_line)
    ev.target.host, ev.target.port = "172.16.1.170", 18080
    dest = Destination("service", "plain-svc", "demo-to", "172.16.1.170", 18080,
                       "plain-svc.demo-to:18080", [server])
    return LiveRun(ev, client, server, dest, ProbeResult(RID, "http://x/", "172.16.1.170:18080",
                                                         status=200), app_line=app_line)


def test_a_server_without_sidecar_is_confirmed_by_the_apps_own_line(data: Path) -> None:
    run = _run(data, False, "X-Forwarded-For=, RemoteAddr=10.20.0.78:45808")
    report = live.explain(run)
    assert report.mode == "none (no sidecar)"
    assert report.steps[2].status == "not captured"
    v = report.verdict
    assert (v.app_sees, v.sees_client, v.confirmed) == ("10.20.0.78", True, True)
    assert "RemoteAddr=10.20.0.78:45808" in v.confirmation
    assert not any("server sidecar" in m.what or "access log" in m.what
                   for m in report.missing)


def test_an_app_line_for_another_address_confirms_nothing(data: Path) -> None:
    run = _run(data, False, "X-Forwarded-For=, RemoteAddr=127.0.0.6:45808")
    v = live.explain(run).verdict
    assert v.app_sees == "10.20.0.78" and not v.confirmed


def test_a_grpc_servers_peer_line_confirms_like_remoteaddr(data: Path) -> None:
    """grpcio's context.peer() (remora's gRPC demo server prints it) is the app's line of a
    gRPC server: the same confirmation as the seed's RemoteAddr=, another address none."""
    run = _run(data, False, "Method=/remora.demo.Simple/Sauth, Peer=ipv4:10.20.0.78:45808")
    v = live.explain(run).verdict
    assert (v.app_sees, v.confirmed) == ("10.20.0.78", True)
    assert v.confirmation == ("the server app logged `Method=/remora.demo.Simple/Sauth, "
                              "Peer=ipv4:10.20.0.78:45808` for the probe's connection")
    other = _run(data, False, "Method=/remora.demo.Simple/Sauth, Peer=ipv4:127.0.0.6:45808")
    assert not live.explain(other).verdict.confirmed
