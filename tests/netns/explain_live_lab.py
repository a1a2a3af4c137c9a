"""A throwaway lab running the seed, for the live `remora explain source-ip` tests.

``seed_lab(sidecar, ready)`` starts a lab (remora.lab.testing.TempLab: its own state
directory and namespace prefix) with pods from .77 (10.20.0.77, or fd00:10:20::77 with
``ip_family="ipv6"``), applies the seed's unchanged manifests (or, with ``seed=GRPC``,
those of `remora demo --grpc`), waits until the server app's own log matches READY (the
seed client calls once a second, so the path really works), yields a ``SeedLab`` and, when
the block ends, closes the lab and asserts it left nothing behind.

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
