"""A throwaway lab running the seed, for the live `remora explain source-ip` tests.

``seed_lab(sidecar, ready)`` starts a lab (remora.lab.testing.TempLab: its own state
directory and namespace prefix) with pods from .77 (10.20.0.77, or fd00:10:20::77 with
``ip_family="ipv6"``), applies the seed's unchanged manifests (or, with ``seed=GRPC``,
those of `remora demo --grpc`), waits until the server app's own log matches READY (the
seed client calls once a second, so the path really works), yields a ``SeedLab`` and, when
the block ends, closes the lab and asserts it left nothing behind. ``check_redirect`` and
``check_tproxy`` hold what every live answer of the seed shows before and after its TPROXY
patch, in either IP family; each test adds what is its own.

    @pytest.fixture(scope="module", params=SIDECARS)
    def seed(request: pytest.FixtureRequest) -> Iterator[SeedLab]:
        with seed_lab(request.param, r"RemoteAddr=127\\.0\\.0\\.6:\\d+") as s:
            yield s
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remora.lab import demo, demo_grpc, session
from remora.lab.testing import TempLab

# the sidecar kinds a lab runs: remora proxy, and a real Envoy under the `envoy` marker
SIDECARS = [pytest.param("remora", id="remora"),
            pytest.param("envoy", id="envoy", marks=pytest.mark.envoy)]
# the server pod's address with --pod-ip-start 77, per IP family
SERVER_IPS = {"ipv4": "10.20.0.77", "ipv6": "fd00:10:20::77"}


@dataclass(frozen=True)
class Seed:
    """Which seed a lab runs: its client deployment (namespace demo-from), its server
    deployment and pod label (namespace demo-to), explain's default --to and --path, and
    its manifests."""

    client: str
    server: str
    label: str
    to: str
    path: str | None
    manifests: Callable[[], contextlib.AbstractContextManager[tuple[Path, Path]]]


HTTP = Seed("simple-client", "simple-server", "server", "simple-server-svc.demo-to:18080",
            "/common/sauth", demo.seed_paths)
# without --path, explain's gRPC probe is the health check (tests pass the demo's method)
GRPC = Seed("simple-grpc-client", "simple-grpc-server", "grpc-server",
            "simple-grpc-server-svc.demo-to:18080", None, demo_grpc.grpc_paths)


@dataclass
class SeedLab:
    lab: TempLab
    sidecar: str
    seed: Seed

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.lab.remora(*args, stdin=stdin)
        assert done.returncode == 0, f"remora {' '.join(args)}: {done.stderr}"
        return done.stdout

    def explain(self, *args: str, to: str | None = None) -> str:
        """`remora explain source-ip` from the seed's client to TO (the seed's Service)."""
        path = ("--path", self.seed.path) if self.seed.path else ()
        return self.ok("explain", "source-ip", "--from", f"deploy/{self.seed.client}",
                       "-n", "demo-from", "--to", to or self.seed.to, *path, *args)

    def explain_json(self, *args: str, to: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.explain("-o", "json", *args, to=to))
        return doc

    def server_pod(self) -> tuple[str, str]:
        """The seed server's one live pod: its name and IP."""
        pods = [p for p in session.connect(self.lab.state_dir).get("Pod", "demo-to")
                if "deletionTimestamp" not in p["metadata"]
                and p["metadata"]["labels"].get("web") == self.seed.label]
        assert len(pods) == 1, pods
        return pods[0]["metadata"]["name"], pods[0]["status"]["podIP"]

    def cluster_ip(self) -> str:
        """The ClusterIP of the seed's Service."""
        name = self.seed.to.partition(".")[0]
        [svc] = [s for s in session.connect(self.lab.state_dir).get("Service", "demo-to")
                 if s["metadata"]["name"] == name]
        ip: str = svc["spec"]["clusterIP"]
        return ip

    def wait_app_log(self, pod: str, pattern: str, timeout: float = 30) -> None:
        """Wait until the server app in POD (demo-to) logs PATTERN: the seed client calls
        once a second, so this says when the path really works."""
        client = session.connect(self.lab.state_dir)
        deadline = time.monotonic() + timeout
        while not re.search(pattern, client.logs("demo-to", pod, "demo")["text"]):
            assert time.monotonic() < deadline, f"demo-to/{pod} never logged {pattern}"
            time.sleep(0.3)

    def tproxy_patch(self, ready: str) -> tuple[str, str]:
        """The seed's own fix (demo.TPROXY_PATCH on the server deployment), its rollout,
        and the wait until the new pod's app logs READY; the new pod's name and IP."""
        deployment = self.seed.server
        self.ok("patch", "deployment", deployment, "-n", "demo-to", "-p", demo.TPROXY_PATCH)
        self.ok("rollout", "status", f"deployment/{deployment}", "-n", "demo-to",
                "--timeout", "40")
        name, ip = self.server_pod()
        self.wait_app_log(name, ready, timeout=60)
        return name, ip


@contextlib.contextmanager
def seed_lab(sidecar: str, ready: str, *, seed: Seed = HTTP,
             ip_family: str = "ipv4") -> Iterator[SeedLab]:
    with TempLab() as lab:
        s = SeedLab(lab, sidecar, seed)
        family = ("--ip-family", ip_family) if ip_family != "ipv4" else ()
        s.ok("up", "--prefix", lab.prefix, "--pod-ip-start", "77", *family,
             "--sidecar", sidecar)
        s.ok("apply", "-f", "-", stdin=demo.NAMESPACES)
        with seed.manifests() as (server_yaml, client_yaml):
            s.ok("apply", "-f", str(server_yaml), "--wait", "--timeout", "40")
            s.ok("apply", "-f", str(client_yaml), "--wait", "--timeout", "40")
        name, ip = s.server_pod()
        assert ip == SERVER_IPS[ip_family]
        s.wait_app_log(name, ready)
        yield s
        lab.close()
        assert lab.leftovers() == []


def step(doc: dict[str, Any], n: int) -> dict[str, Any]:
    """Step N (from 1) of an explain JSON answer."""
    found: dict[str, Any] = doc["steps"][n - 1]
    return found


def _hostport(ip: str) -> str:
    """IP as it stands before ``:PORT`` in an access log (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


def check_redirect(doc: dict[str, Any], client_ip: str, server_ip: str,
                   app_sees: str) -> dict[str, Any]:
    """What every live REDIRECT answer of the seed shows, in either IP family: the probe
    answered, its own line in the server sidecar's log (found by its x-request-id) with
    the inbound sidecar's source APP_SEES, the app's own line for that connection, and the
    probe itself moving the client's ISTIO_REDIRECT counter. The access-log line."""
    live, verdict = doc["live"], doc["verdict"]
    assert live["client_pod"]["ip"] == client_ip and live["server_pod"]["ip"] == server_ip
    assert live["probe"]["status"] == 200, live["probe"]
    assert doc["mode"] == "REDIRECT"
    assert [s["status"] for s in doc["steps"]] == ["ok", "ok", "ok", "ok"]
    [line] = live["server_access_log"]
    assert line["request_id"] == live["probe"]["request_id"]
    assert line["upstream_cluster"] == "inbound|18080||"
    assert line["upstream_local_address"].startswith(f"{_hostport(app_sees)}:")
    assert line["downstream_remote_address"].startswith(f"{_hostport(client_ip)}:")
    assert verdict["app_sees"] == app_sees and verdict["sees_client"] is False
    assert verdict["confirmed"] is True
    assert f"UPSTREAM_LOCAL_ADDRESS {line['upstream_local_address']}" in verdict["confirmation"]
    # the app's own log line for that connection, found by the address the sidecar used
    assert live["app_log_line"].endswith(f"RemoteAddr={line['upstream_local_address']}")
    # the client's nat OUTPUT, read before and after: the probe moved the REDIRECT rule
    redirect = [r for r in step(doc, 1)["iptables"]["rules"]
                if r["chain"] == "ISTIO_REDIRECT" and r["matched"]]
    assert redirect and re.fullmatch(r"\d+ pkts, \+\d+ during the probe", redirect[0]["counters"])
    moved = {(m["chain"], m["index"]) for m in live["counters_moved"]["client"]}
    assert ("ISTIO_REDIRECT", 1) in moved
    assert step(doc, 4)["sidecar"]["upstream_source"] == app_sees
    line_found: dict[str, Any] = line
    return line_found


def check_tproxy(doc: dict[str, Any], name: str, ip: str, client_ip: str) -> None:
    """What every live answer after the seed's TPROXY patch shows, in either IP family:
    the new server pod NAME (IP) answered, the server sidecar's connection to the app came
    from the client's address (access log, verdict and the app's own line), the probe's
    connection moved the server's mangle ISTIO_INBOUND, and TPROXY's policy routing was
    read in the server pod (fwmark 0x539 lookup 133), not listed as unknown."""
    live, verdict = doc["live"], doc["verdict"]
    assert live["server_pod"]["name"] == name and live["probe"]["status"] == 200
    assert ip == live["server_pod"]["ip"]  # the new pod's address
    assert doc["mode"] == "TPROXY"
    tproxy = step(doc, 3)["iptables"]["capture"]
    assert (tproxy["kind"], tproxy["port"], tproxy["mark"]) == ("TPROXY", 15006, 0x539)
    [line] = live["server_access_log"]
    assert line["upstream_local_address"].startswith(f"{_hostport(client_ip)}:")
    assert verdict["app_sees"] == client_ip and verdict["sees_client"] is True
    assert verdict["confirmed"] is True and verdict["fixes"] == []
    assert live["app_log_line"].endswith(f"RemoteAddr={line['upstream_local_address']}")
    moved = {m["chain"] for m in live["counters_moved"]["server"]}
    assert "ISTIO_INBOUND" in moved  # mangle counts every packet of the probe's connection
    assert not any("policy routing" in m["what"] for m in doc["missing"]), doc["missing"]
    routing = [n for n in step(doc, 3)["notes"] if n.startswith("policy routing: ")]
    assert routing and "fwmark 0x539 lookup 133" in routing[0], step(doc, 3)["notes"]
