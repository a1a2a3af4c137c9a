"""remora's own sidecars tell the same story: the seed's pods injected and configured by
remora's control plane, with the capture rules remora's istio-iptables builds from the
injected istio-init args, explained offline: REDIRECT -> 127.0.0.6, TPROXY -> client."""

from __future__ import annotations

import pytest

from remora.capture.argv import parse_args
from remora.capture.model import build
from remora.capture.render import restore
from remora.controlplane.generate import generate, static_bootstrap
from remora.diagnose.envoy.config import EnvoyConfig, add_document
from remora.diagnose.iptables.save import parse_iptables_save
from remora.diagnose.source_ip.evidence import Evidence
from remora.diagnose.source_ip.explain import explain_source_ip
from remora.resources.objects import Pod
from tests.unit.controlplane.seed import CLIENT_IP, CLUSTER_IP, SERVER_IP, seed


def rules_of(pod: Pod) -> str:
    (init,) = [c for c in pod.spec.initContainers if c.name == "istio-init"]
    return restore(build(parse_args(list(init.args))).v4)


def config_of(snapshot: object, pod: Pod, ip: str) -> EnvoyConfig:
    cfg = EnvoyConfig()
    sidecar = generate(snapshot, pod, ip, "/etc/remora")  # type: ignore[arg-type]
    add_document(cfg, static_bootstrap(sidecar), pod.metadata.name)
    return cfg


@pytest.mark.parametrize("tproxy,seen", [(False, "127.0.0.6"), (True, CLIENT_IP)])
def test_remora_generated_pods(tproxy: bool, seen: str) -> None:
    snapshot, server, client = seed(tproxy=tproxy)
    ev = Evidence()
    ev.server.iptables = parse_iptables_save(rules_of(server))[0]
    ev.client.iptables = parse_iptables_save(rules_of(client))[0]
    ev.server.config = config_of(snapshot, server, SERVER_IP)
    ev.client.config = config_of(snapshot, client, CLIENT_IP)
    ev.target.host, ev.target.port = "simple-server-svc.demo-to", 18080
    r = explain_source_ip(ev)
    assert r.mode == ("TPROXY" if tproxy else "REDIRECT")
    assert [s.status for s in r.steps] == ["ok", "ok", "ok", "ok"], [s.summary for s in r.steps]
    assert r.facts["service_ip"].value == CLUSTER_IP
    c, s = r.steps[1].sidecar, r.steps[3].sidecar
    assert c is not None and c.endpoint == f"{SERVER_IP}:18080"
    assert s is not None and s.cluster == "inbound|18080||"
    assert r.verdict.app_sees == seen and r.verdict.sees_client is tproxy
