"""`remora explain source-ip --from POD --to SERVICE` against a running lab with the seed.

One lab per sidecar kind (remora proxy; a real Envoy under the `envoy` marker), in its own
state directory and namespace prefix (remora.lab.testing.TempLab), running the seed's
unchanged manifests: REDIRECT first (the app sees 127.0.0.6, confirmed by the probe's own
access-log line), then a server without a sidecar, bad input, and last the seed's TPROXY
patch (the app sees the client pod's IP). Every answer comes from the real pods: the probe
is a real request, the counters are the kernel's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from remora.lab.testing import TempLab
from tests.netns import explain_live_lab as xl
from tests.netns.manifests import PLAIN_SERVER

pytestmark = pytest.mark.netns

SERVER_IP, CLIENT_IP = "10.20.0.77", "10.20.0.78"


@pytest.fixture(scope="module", params=xl.SIDECARS)
def seed(request: pytest.FixtureRequest) -> Iterator[xl.SeedLab]:
    with xl.seed_lab(request.param, r"RemoteAddr=127\.0\.0\.6:\d+") as s:
        yield s


def _decided_rule(walk: dict[str, Any]) -> dict[str, Any]:
    """The rule a walk's capture.decided_by (``nat/ISTIO_OUTPUT #5``) names."""
    table_chain, _, index = walk["capture"]["decided_by"].partition(" #")
    table, _, chain = table_chain.partition("/")
    [rule] = [r for r in walk["rules"] if (r["table"], r["chain"], r["index"])
              == (table, chain, int(index))]
    found: dict[str, Any] = rule
    return found


def test_redirect_the_app_sees_127_0_0_6_confirmed_by_the_probe(seed: xl.SeedLab) -> None:
    doc = seed.explain_json()
    xl.check_redirect(doc, CLIENT_IP, SERVER_IP, "127.0.0.6")
    # the client sidecar's own upstream connection: the lab runs it as Istio's REDIRECT
    # sidecar, uid 1337 / gid 1337 (read from its process), so the --uid-owner rule lets
    # it out, before any --gid-owner one
    decided = _decided_rule(xl.step(doc, 2)["follow_up"])
    assert (decided["table"], decided["chain"]) == ("nat", "ISTIO_OUTPUT")
    assert "-m owner --uid-owner 1337 -j RETURN" in decided["rule"], decided
    packet = xl.step(doc, 2)["follow_up"]["packet"]
    assert (packet["uid"], packet["gid"]) == (1337, 1337)
    assert any(e.startswith("sidecar process: uid 1337 / gid 1337 (/proc/")
               for e in doc["evidence"]["client"])
    assert not any("sidecar runs as" in a for a in doc["assumptions"])


def test_redirect_text_output(seed: xl.SeedLab) -> None:
    out = seed.explain()
    assert re.match(rf"live: from pod demo-from/simple-client-\S+ \({CLIENT_IP}\) to service "
                    r"demo-to/simple-server-svc \(172\.16\.\d+\.\d+:18080\), served by pod "
                    rf"demo-to/simple-server-\S+ \({SERVER_IP}\)", out)
    assert re.search(r"probe: GET http://simple-server-svc\.demo-to:18080/common/sauth -> "
                     r"HTTP/1\.1 200 OK", out)
    assert re.search(r"ISTIO_REDIRECT #1  \[\d+ pkts, \+\d+ during the probe\] .*"
                     r"REDIRECT --to-ports 15001", out)
    assert "   the app sees 127.0.0.6 (not the client 10.20.0.78)" in out
    assert re.search(r"   confirmed: access log line \d+: UPSTREAM_LOCAL_ADDRESS "
                     r"127\.0\.0\.6:\d+", out)
    assert "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN" in out  # why 127.0.0.6
    assert "remora patch deployment simple-server -n demo-to -p" in out
    assert "rule counters that moved during the probe" in out


def test_compare_and_diagram_as_offline(seed: xl.SeedLab, tmp_path: Any) -> None:
    svg = tmp_path / "path.svg"
    out = seed.explain("--compare", "--diagram", str(svg))
    rows = [line for line in out.splitlines() if line.startswith(("REDIRECT", "TPROXY"))]
    assert rows[0].startswith("REDIRECT (now)") and "127.0.0.6" in rows[0]
    assert any(r.startswith("TPROXY") and CLIENT_IP in r for r in rows)
    assert svg.read_text().startswith("<svg")


def test_pod_target(seed: xl.SeedLab) -> None:
    name, _ = seed.server_pod()
    doc = seed.explain_json(to=f"{name}.demo-to:18080")
    assert doc["live"]["destination"] == {"kind": "pod", "name": name, "namespace": "demo-to",
                                          "host": SERVER_IP, "port": 18080,
                                          "authority": f"{SERVER_IP}:18080",
                                          # the seed's unnamed Service port: sniffed, so
                                          # the probe stays HTTP/1.1
                                          "protocol": "UnsupportedProtocol"}
    assert doc["live"]["probe"]["protocol"] == "HTTP/1.1"
    assert doc["verdict"]["app_sees"] == "127.0.0.6" and doc["verdict"]["confirmed"] is True


def test_pods_without_sidecar(seed: xl.SeedLab) -> None:
    # The plain namespace stays until the lab goes (its pod's IP is not reused by the
    # TPROXY pod below; tests/netns/test_node_ip_reuse.py covers reuse).
    seed.ok("apply", "-f", "-", "--wait", "--timeout", "40", stdin=PLAIN_SERVER)
    doc = seed.explain_json(to="plain-svc.plain:18080")
    live = doc["live"]
    assert live["server_pod"]["sidecar"] is False and live["probe"]["status"] == 200
    assert any("has no sidecar (istio-proxy): no mesh on its side" in n
               for n in live["notes"])
    assert doc["mode"] == "none (no sidecar)"
    assert xl.step(doc, 3)["status"] == "not captured"
    assert doc["verdict"]["app_sees"] == CLIENT_IP and doc["verdict"]["sees_client"]
    # no sidecar log to confirm by: the app's own line for the connection does
    assert live["app_log_line"].startswith("X-Forwarded-For=, RemoteAddr=10.20.0.78:")
    assert doc["verdict"]["confirmed"] is True
    assert not any("server sidecar" in m["what"] for m in doc["missing"])
    # and the other way: a client without a sidecar is not captured; the server's is
    done = seed.ok("explain", "source-ip", "--from", "deploy/plain-server", "-n", "plain",
                   "--to", "simple-server-svc.demo-to:18080", "--path", "/common/sauth",
                   "-o", "json")
    doc = json.loads(done)
    live = doc["live"]
    plain_ip = live["client_pod"]["ip"]
    assert live["client_pod"]["sidecar"] is False and live["probe"]["status"] == 200
    assert any("has no sidecar (istio-proxy): its connections leave it uncaptured" in n
               for n in live["notes"])
    assert [s["status"] for s in doc["steps"]] == ["not captured", "skipped", "ok", "ok"]
    [line] = live["server_access_log"]
    assert line["downstream_remote_address"].startswith(f"{plain_ip}:")
    assert doc["verdict"]["app_sees"] == "127.0.0.6" and doc["verdict"]["confirmed"] is True
    assert not any("client sidecar" in m["what"] for m in doc["missing"])


@pytest.mark.parametrize("args,message", [
    (["--from", "nope", "-n", "demo-from", "--to", "simple-server-svc.demo-to"],
     "client pod 'nope' not found in namespace 'demo-from'"),
    (["--from", "deploy/simple-client", "-n", "demo-from", "--to", "nope.demo-to:80"],
     "no service or pod named 'nope' in namespace 'demo-to'"),
    (["--from", "deploy/simple-client", "-n", "demo-from", "--to",
      "simple-server-svc.demo-to:81"], "has no port 81 (its ports: 18080)"),
])
def test_bad_pods_are_one_line_errors(seed: xl.SeedLab, args: list[str], message: str) -> None:
    done = seed.lab.remora("explain", "source-ip", *args)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("remora: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1


def test_no_lab_running(tmp_path: Any) -> None:
    lab = TempLab()
    try:
        done = lab.remora("explain", "source-ip", "--from", "x", "--to", "y:1",
                          "--state-dir", str(tmp_path / "none"))
        assert done.returncode != 0
        assert done.stderr == (f"remora: error: no lab is running at {tmp_path / 'none'} (fix: "
                               "start it with `remora up` (or pass the --state-dir it uses))\n")
    finally:
        lab.close()


def test_tproxy_patch_the_app_sees_the_client(seed: xl.SeedLab) -> None:
    """Last: it changes the lab (the seed's own fix, then a rollout)."""
    # The seed client's own calls say when the new pod's path works.
    name, ip = seed.tproxy_patch(rf"RemoteAddr={re.escape(CLIENT_IP)}:\d+")
    doc = seed.explain_json()
    xl.check_tproxy(doc, name, ip, CLIENT_IP)
    routing = [n for n in xl.step(doc, 3)["notes"] if n.startswith("policy routing: ")]
    assert "`local default dev lo" in routing[0]
    # the server sidecar's connection to the app (from the client's address) is let out
    # by its gid, as the kernel does for a uid 0 / gid 1337 process
    follow = xl.step(doc, 4)["follow_up"]
    assert (follow["packet"]["uid"], follow["packet"]["gid"]) == (0, 1337)
