"""The lab's side of IPv6 and dual stack: what the injector passes in a dual-stack lab,
the sidecar config generated from the pod's own addresses, kubectl's describe lines for
IPv6 and dual-stack pods and services (an IPv4 lab's output unchanged), the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from remora.cli.main import cli
from remora.errors import RemoraError, UsageError
from remora.lab import describe, session
from remora.lab import settings as lab_settings
from remora.lab.settings import LabSettings
from remora.lab.setup import MeshSetup
from remora.node.hooks import PodContext
from tests.unit.lab.test_setup import NS, server_pod


def setup_for(*families: str) -> MeshSetup:
    setup = MeshSetup()
    setup.ip_families = families
    return setup


def test_a_dual_stack_lab_injects_istio_dual_stack_into_init_and_proxy() -> None:
    pod = setup_for("IPv4", "IPv6").admit(server_pod(), NS)
    init = pod["spec"]["initContainers"][0]
    proxy = pod["spec"]["containers"][1]
    assert init["env"] == [{"name": "ISTIO_DUAL_STACK", "value": "true"}]
    assert proxy["env"][-1] == {"name": "ISTIO_DUAL_STACK", "value": "true"}
    # IPv6-only: istio-iptables sees the pod's first address is IPv6; IPv4: as before
    for families in (("IPv6",), ("IPv4",)):
        plain = setup_for(*families).admit(server_pod(), NS)
        assert "env" not in plain["spec"]["initContainers"][0]
        assert all(e["name"] != "ISTIO_DUAL_STACK" for e in plain["spec"]["containers"][1]["env"])
    same = server_pod()
    assert setup_for("IPv4").admit(same, NS) == MeshSetup().admit(same, NS)


def test_the_sidecar_config_follows_the_pods_own_addresses(tmp_path: Path) -> None:
    for ips, first_address in ((("fd00:10:20::77",), "::"),
                               (("10.20.0.77", "fd00:10:20::77"), "0.0.0.0")):
        setup = setup_for("IPv4", "IPv6")
        pod = setup.admit(server_pod(), NS)
        pod_dir = tmp_path / ips[-1].replace(":", "_") / ips[0].replace(":", "_")
        ctx = PodContext("demo-to", pod["metadata"]["name"], "uid-1", "rl-pod-1", ips[0], 1,
                         "rl-node-1", pod, pod_dir, tmp_path, ips=ips)
        (tmp_path / "lab.json").write_text(json.dumps({"mtls": False}))
        setup.prepare(ctx)
        lds = json.loads((pod_dir / "envoy" / "lds.json").read_text())
        inbound = next(r for r in lds["resources"] if r["name"] == "virtualInbound")
        assert inbound["address"]["socket_address"]["address"] == first_address
        extra = [a["address"]["socket_address"]["address"]
                 for a in inbound.get("additional_addresses") or []]
        assert extra == (["::"] if len(ips) == 2 else [])


def test_describe_shows_ips_and_families_as_kubectl_does() -> None:
    pod = {"metadata": {"name": "p", "namespace": "demo-to"}, "spec": {},
           "status": {"podIP": "10.20.0.77",
                      "podIPs": [{"ip": "10.20.0.77"}, {"ip": "fd00:10:20::77"}]}}
    text = describe.pod(pod, 0.0)
    assert "IP:               10.20.0.77\nIPs:\n  IP:           10.20.0.77\n" \
           "  IP:           fd00:10:20::77\n" in text
    pod["status"]["podIPs"] = [{"ip": "10.20.0.77"}]
    assert "IPs:" not in describe.pod(pod, 0.0)  # an IPv4 pod reads as before
    svc = {"metadata": {"name": "s", "namespace": "demo-to"},
           "spec": {"type": "ClusterIP", "clusterIP": "172.16.0.20",
                    "clusterIPs": ["172.16.0.20", "fd00:96::20"],
                    "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                    "ports": [{"port": 80}]}}
    assert ("Type:             ClusterIP\nIP Family Policy: PreferDualStack\n"
            "IP Families:      IPv4,IPv6\nIP:               172.16.0.20\n"
            "IPs:              172.16.0.20,fd00:96::20\n") in describe.service(svc, [], 0.0)
    v4 = {"metadata": svc["metadata"], "spec": {"type": "ClusterIP", "clusterIP": "172.16.0.20",
                                                "clusterIPs": ["172.16.0.20"],
                                                "ports": [{"port": 80}]}}
    assert "IP Famil" not in describe.service(v4, [], 0.0)


def test_settings_and_cli_refuse_an_unknown_family() -> None:
    with pytest.raises(UsageError, match="unknown IP family 'ipv5'"):
        LabSettings(ip_family="ipv5").check()
    result = CliRunner().invoke(cli, ["up", "--ip-family", "ipv5"])
    assert result.exit_code == 2 and "'ipv5' is not one of 'ipv4', 'ipv6', 'dual'" in \
        result.output
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert "--ip-family [ipv4|ipv6|dual]" in result.output


def test_a_lab_of_another_family_is_refused_not_reused(tmp_path: Path) -> None:
    lab_settings.save(tmp_path, LabSettings())  # an IPv4 lab whose daemon is not answering
    (tmp_path / "remora.db").write_text("")
    with pytest.raises(RemoraError) as caught:
        session.refuse_differences(tmp_path, LabSettings(ip_family="ipv6"), {"ip_family"},
                                   "remora demo")
    assert caught.value.problem == (f"the lab at {tmp_path} runs with IP family ipv4 (not "
                                    "ipv6); settings apply only when a lab starts")
    # not asked for explicitly: the running lab is used as it is
    session.refuse_differences(tmp_path, LabSettings(ip_family="ipv6"), set(), "remora demo")
    assert lab_settings.load(tmp_path).ip_family == "ipv4"
    lab_settings.save(tmp_path, LabSettings(ip_family="dual"))
    assert lab_settings.load(tmp_path).ip_family == "dual"
