"""`remora explain source-ip --kube` and `remora proxy-config --kube` against the lab,
through its Kubernetes API and `remora kubeconfig`: the code path a real cluster takes.

One lab for the module (remora proxy as the sidecar) running the seed's unchanged
manifests. In REDIRECT mode and, after the seed's TPROXY patch sent through the API (the
official Python client) and its rollout, in TPROXY mode, the cluster form must reach the
verdict the live lab form reaches from the pods' own namespaces. What it could not
collect is named with the reason: the lab's istio-proxy container has no pilot-agent, so
the config dump comes from the next try (curl of the admin port).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from remora.lab import demo, session
from remora.lab.testing import TempLab
from tests.netns.manifests import PLAIN_SERVER

pytestmark = pytest.mark.netns

SERVER_IP, CLIENT_IP = "10.20.0.77", "10.20.0.78"
TO = "simple-server-svc.demo-to:18080"
TPROXY = {"spec": {"template": {"metadata": {"annotations": {
    "sidecar.istio.io/interceptionMode": "TPROXY"}}}}}


@dataclass
class KubeLab:
    lab: TempLab
    kubeconfig: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> Any:
        self.lab.env.update(env or {"KUBECONFIG": str(self.kubeconfig)})
        return self.lab.remora(*args)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"remora {' '.join(args)}: {done.stderr}"
        return str(done.stdout)

    def explain(self, *extra: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.ok(
            "explain", "source-ip", "--from", "deploy/simple-client", "-n", "demo-from",
            "--to", TO, "--path", "/common/sauth", "-o", "json", *extra))
        return doc

    def server_pods(self) -> list[dict[str, Any]]:
        return [p for p in session.connect(self.lab.state_dir).get("Pod", "demo-to")
                if "deletionTimestamp" not in p["metadata"]]

    def wait_app_log(self, pattern: str, timeout: float = 40) -> str:
        deadline = time.monotonic() + timeout
        node = session.connect(self.lab.state_dir)
        while True:
            pods = self.server_pods()
            if len(pods) == 1 and pods[0]["status"].get("ready"):
                name = pods[0]["metadata"]["name"]
                if re.search(pattern, node.logs("demo-to", name, "demo")["text"]):
                    return str(name)
            assert time.monotonic() < deadline, f"the server app never logged {pattern}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeLab]:
    with TempLab() as lab:
        up = lab.remora("up", "--prefix", lab.prefix, "--pod-ip-start", "77")
        assert up.returncode == 0, up.stderr
        assert lab.remora("apply", "-f", "-", stdin=demo.NAMESPACES).returncode == 0
        with demo.seed_paths() as (server_yaml, client_yaml):
            for path in (server_yaml, client_yaml):
                done = lab.remora("apply", "-f", str(path), "--wait", "--timeout", "40")
                assert done.returncode == 0, done.stderr
        path = lab.remora("kubeconfig")
        assert path.returncode == 0, path.stderr
        k = KubeLab(lab, Path(path.stdout.strip()))
        k.wait_app_log(r"RemoteAddr=127\.0\.0\.6:\d+")
        yield k
        lab.close()
        assert lab.leftovers() == []


def _same_verdict(kube_doc: dict[str, Any], live_doc: dict[str, Any]) -> None:
    for key in ("app_sees", "sees_client", "kind"):
        assert kube_doc["verdict"][key] == live_doc["verdict"][key], key
    assert kube_doc["mode"] == live_doc["mode"]
    assert [s["status"] for s in kube_doc["steps"]] == [s["status"] for s in live_doc["steps"]]


def test_redirect_same_verdict_as_the_live_lab(kube: KubeLab) -> None:
    doc = kube.explain("--kube")
    live = kube.explain()
    _same_verdict(doc, live)
    k = doc["kube"]
    assert k["server"].startswith("https://127.0.0.1:")
    assert k["client_pod"]["ip"] == CLIENT_IP and k["server_pod"]["ip"] == SERVER_IP
    assert doc["mode"] == "REDIRECT"
    assert doc["verdict"]["app_sees"] == "127.0.0.6"
    assert doc["verdict"]["kind"] == "established" and doc["verdict"]["confirmed"] is True
    # confirmed by a recent line of the server sidecar's log (the client calls each second)
    assert "UPSTREAM_LOCAL_ADDRESS 127.0.0.6:" in doc["verdict"]["confirmation"]
    # every step was collected through pods/exec and pods/log; the lab's istio-proxy has
    # no pilot-agent, so the config dump came from curl of the admin port
    assert k["not_collected"] == []
    collected = "\n".join(k["collected"])
    for role in ("client", "server"):
        assert f"{role} capture rules: iptables-save in demo-" in collected
        assert re.search(rf"{role} config dump: `curl -s --max-time 10 http://localhost:15000/"
                         r"config_dump\?include_eds` in demo-\S+ -c istio-proxy \(tried first: "
                         r"`pilot-agent request GET`: not in the container's image", collected)
        assert f"{role} access log: istio-proxy log of" in collected
    assert "server policy routing: ip -4 rule show" in collected
    assert "RemoteAddr=127.0.0.6:" in k["app_log_line"]
    assert any("securityContext" in e for e in doc["evidence"]["server"])


def test_redirect_text_names_what_it_collected(kube: KubeLab) -> None:
    out = kube.ok("explain", "source-ip", "--kube", "--from", "deploy/simple-client",
                  "-n", "demo-from", "--to", TO)
    assert re.match(rf"kube: https://127\.0\.0\.1:\d+: from pod demo-from/simple-client-\S+ "
                    rf"\({CLIENT_IP}\) to service demo-to/simple-server-svc "
                    rf"\(172\.16\.\d+\.\d+:18080\), served by pod demo-to/simple-server-\S+ "
                    rf"\({SERVER_IP}\)", out)
    assert "   the app sees 127.0.0.6 (not the client 10.20.0.78)" in out


def test_proxy_config_through_the_api_matches_the_lab_form(kube: KubeLab) -> None:
    pod = kube.server_pods()[0]["metadata"]["name"]
    for what in ("listener", "cluster", "route"):
        via_api = kube.ok("proxy-config", what, pod, "-n", "demo-to", "--kube")
        local = kube.ok("proxy-config", what, pod, "-n", "demo-to")
        assert via_api == local, what
    listeners = kube.ok("proxy-config", "listener", pod, "-n", "demo-to", "--kube",
                        "--port", "15006")
    assert "virtualInbound" in listeners or "15006" in listeners
    clusters = json.loads(kube.ok("proxy-config", "cluster", f"{pod}.demo-to", "--kube",
                                  "--fqdn", "inbound|18080||", "-o", "json"))
    assert [c["name"] for c in clusters] == ["inbound|18080||"]


def test_bad_credentials_and_missing_pod_are_one_line_errors(kube: KubeLab,
                                                              tmp_path: Path) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "not-the-token"
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump(config))
    done = kube.run("explain", "source-ip", "--kube", "--from", "deploy/simple-client",
                    "-n", "demo-from", "--to", TO, env={"KUBECONFIG": str(bad)})
    assert done.returncode == 1
    assert "unauthorized: the kubeconfig's credentials were refused (401)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = kube.run("proxy-config", "listener", "nope", "-n", "demo-to", "--kube",
                    "--context", "no-such-context")
    assert done.returncode == 1 and "cannot use the kubeconfig" in done.stderr, done.stderr
    done = kube.run("proxy-config", "listener", "nope", "-n", "demo-to", "--kube")
    assert done.returncode == 1 and "'nope' not found in namespace 'demo-to'" in done.stderr




def test_pods_without_sidecar_as_the_live_form(kube: KubeLab) -> None:
    """A server without a sidecar is not a gap: nothing to collect from a sidecar, the app
    sees the client; a client without one sends uncaptured. Same as the live form."""
    done = kube.lab.remora("apply", "-f", "-", "--wait", "--timeout", "40", stdin=PLAIN_SERVER)
    assert done.returncode == 0, done.stderr
    args = ("--to", "plain-svc.plain:18080")
    doc, live = kube.explain("--kube", *args), kube.explain(*args)
    assert doc["verdict"]["app_sees"] == live["verdict"]["app_sees"] == CLIENT_IP
    assert doc["mode"] == live["mode"] == "none (no sidecar)"
    assert [s["status"] for s in doc["steps"]] == [s["status"] for s in live["steps"]]
    assert not any("server sidecar" in m["what"] for m in doc["missing"])
    assert doc["kube"]["server_pod"]["sidecar"] is False and doc["kube"]["not_collected"] == []
    # the other way round: the plain pod as the client
    out = kube.ok("explain", "source-ip", "--kube", "--from", "deploy/plain-server", "-n",
                  "plain", "--to", TO, "-o", "json")
    doc = json.loads(out)
    assert [s["status"] for s in doc["steps"]] == ["not captured", "skipped", "ok", "ok"]
    assert doc["verdict"]["app_sees"] == "127.0.0.6"
    assert not any("client sidecar" in m["what"] for m in doc["missing"])


def test_tproxy_patched_through_the_api_same_verdict(kube: KubeLab) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    api = kubernetes.config.new_client_from_config(str(kube.kubeconfig))
    apps = kubernetes.client.AppsV1Api(api)
    before = kube.server_pods()[0]["metadata"]["name"]
    apps.patch_namespaced_deployment("simple-server", "demo-to", TPROXY)
    # the rollout: a new pod, Ready, the old one gone, and the app seeing the client
    after = kube.wait_app_log(rf"RemoteAddr={re.escape(CLIENT_IP)}:\d+", timeout=60)
    assert after != before
    doc = kube.explain("--kube")
    live = kube.explain()
    _same_verdict(doc, live)
    assert doc["mode"] == "TPROXY"
    assert doc["verdict"]["app_sees"] == CLIENT_IP and doc["verdict"]["sees_client"] is True
    collected = "\n".join(doc["kube"]["collected"])
    assert "server policy routing: ip -4 rule show; ip -4 route show table 133" in collected
