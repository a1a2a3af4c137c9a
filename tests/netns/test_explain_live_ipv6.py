"""`remora explain source-ip --from POD --to SERVICE` live in an IPv6 lab (issue 12).

One IPv6 lab (`remora up --ip-family ipv6`) per sidecar (remora proxy; a real Envoy
under the `envoy` marker), the seed's unchanged
manifests (pods fd00:10:20::77 and ::78, an IPv6 ClusterIP from fd00:96::/108): REDIRECT
first, where the probe goes over IPv6 through the client's ip6tables rules and the app
sees ``::6`` (explained in the same two sentences as 127.0.0.6, confirmed by the probe's
own access-log line and the app's ``RemoteAddr=[::6]:PORT``), then the seed's TPROXY
patch, where the app sees the client pod's IPv6 address and the policy routing is read
with ``ip -6``. Every answer comes from the real pods: the probe is a real request, the
counters are the kernel's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.netns import explain_live_lab as xl

pytestmark = pytest.mark.netns

SERVER_IP, CLIENT_IP = "fd00:10:20::77", "fd00:10:20::78"


@pytest.fixture(scope="module", params=xl.SIDECARS)
def lab6(request: pytest.FixtureRequest) -> Iterator[xl.SeedLab]:
    with xl.seed_lab(request.param, r"RemoteAddr=\[::6\]:\d+", ip_family="ipv6") as s:
        yield s


def test_redirect_over_ipv6_the_app_sees_colon_colon_6(lab6: xl.SeedLab) -> None:
    vip = lab6.cluster_ip()
    assert vip.startswith("fd00:96::")
    doc = lab6.explain_json()
    line = xl.check_redirect(doc, CLIENT_IP, SERVER_IP, "::6")
    live = doc["live"]
    assert live["destination"]["host"] == vip
    # the probe went over IPv6, from the client pod's own address
    assert live["probe"]["connected_to"] == f"[{vip}]:18080"
    assert live["probe"]["local_address"].startswith(f"[{CLIENT_IP}]:")
    assert line["downstream_local_address"] == f"[{SERVER_IP}]:18080"
    # the client's ip6tables nat OUTPUT was read before and after the probe
    assert any(e.startswith("ip6tables-save -c in pod demo-from/") and
               e.endswith("(before and after the probe)") for e in doc["evidence"]["client"])
    # the sidecar's own connection to the app: let out by ip6tables' ::6 rule
    decided = xl.step(doc, 4)["follow_up"]["capture"]["decided_by"]
    assert decided.startswith("nat/ISTIO_OUTPUT #"), decided


def test_redirect_over_ipv6_text_names_colon_colon_6_as_127_0_0_6(lab6: xl.SeedLab) -> None:
    out = lab6.explain()
    assert re.match(rf"live: from pod demo-from/simple-client-\S+ \({CLIENT_IP}\) to service "
                    r"demo-to/simple-server-svc \(\[fd00:96::[0-9a-f:]+\]:18080\), served by pod "
                    rf"demo-to/simple-server-\S+ \({SERVER_IP}\)", out)
    assert f"the app sees ::6 (not the client {CLIENT_IP})" in out
    assert "So Istio binds its inbound connections to ::6 (upstream_bind_config" in out
    assert "`-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN`" in out
    assert re.search(r"confirmed: access log line \d+: UPSTREAM_LOCAL_ADDRESS \[::6\]:\d+", out)
    assert "rule counters that moved during the probe" in out


def test_ipv6_pod_target_and_bad_family(lab6: xl.SeedLab) -> None:
    name, _ = lab6.server_pod()
    doc = lab6.explain_json(to=f"[{SERVER_IP}]:18080")
    assert doc["live"]["destination"]["kind"] == "pod"
    assert doc["live"]["destination"]["name"] == name
    assert doc["live"]["destination"]["authority"] == f"[{SERVER_IP}]:18080"
    assert doc["live"]["probe"]["status"] == 200
    assert doc["verdict"]["app_sees"] == "::6" and doc["verdict"]["confirmed"] is True
    done = lab6.lab.remora("explain", "source-ip", "--from", "deploy/simple-client", "-n",
                           "demo-from", "--to", "simple-server-svc.demo-to:18080",
                           "--family", "ipv4")
    assert done.returncode != 0 and done.stdout == ""
    assert "service demo-to/simple-server-svc has no IPv4 ClusterIP" in done.stderr
    assert done.stderr.count("\n") == 1


def test_kube_over_ipv6_same_verdict_as_the_live_form(lab6: xl.SeedLab) -> None:
    """`--kube` against the IPv6 lab through its Kubernetes API: ip6tables-save by
    pods/exec, no probe; the same verdict as the live form (REDIRECT, ::6)."""
    path = lab6.ok("kubeconfig").strip()
    lab6.lab.env["KUBECONFIG"] = path
    try:
        done = lab6.lab.remora("explain", "source-ip", "--kube", "--from",
                               "deploy/simple-client", "-n", "demo-from", "--to",
                               "simple-server-svc.demo-to:18080", "--path", "/common/sauth",
                               "-o", "json")
    finally:
        del lab6.lab.env["KUBECONFIG"]
    assert done.returncode == 0, done.stderr
    kube = json.loads(done.stdout)
    live = lab6.explain_json()
    assert kube["verdict"]["app_sees"] == live["verdict"]["app_sees"] == "::6"
    assert kube["mode"] == live["mode"] == "REDIRECT"
    assert [s["status"] for s in kube["steps"]] == [s["status"] for s in live["steps"]]
    assert any("ip6tables-save" in c for c in kube["kube"]["collected"]), kube["kube"]
    assert kube["verdict"]["confirmed"] is True


def test_tproxy_over_ipv6_the_app_sees_the_client(lab6: xl.SeedLab) -> None:
    """Last: the seed's own fix, then a rollout."""
    name, ip = lab6.tproxy_patch(rf"RemoteAddr=\[{re.escape(CLIENT_IP)}\]:\d+")
    doc = lab6.explain_json()
    xl.check_tproxy(doc, name, ip, CLIENT_IP)
    # TPROXY's IPv6 policy routing, read in the server pod with ip -6
    assert any(e.startswith("policy routing: ip -6 rule show; ip -6 route show table 133")
               for e in doc["evidence"]["server"])
