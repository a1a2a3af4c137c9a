"""`remora explain source-ip` on a gRPC port: the live probe speaks HTTP/2.

A throwaway lab per sidecar (the real Envoy and remora proxy, which both speak HTTP/2)
running the gRPC version of the seed (remora demo --grpc's manifests: a Service port
named `grpc`, so Istio's protocol is GRPC). explain's probe is then a gRPC call over h2c
from the client pod, through both sidecars (HTTP/2 over mTLS between them); the verdict
is the seed's (REDIRECT: the app sees 127.0.0.6), confirmed by the probe's own HTTP/2
access-log line and by the server app's own `Peer=ipv4:127.0.0.6:PORT` line for that
connection; after the seed's TPROXY patch, the client pod's address, the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from remora.lab import demo_grpc
from tests.netns import explain_live_lab as xl

pytestmark = [pytest.mark.netns, pytest.mark.envoy]

CLIENT_IP = "10.20.0.78"


@pytest.fixture(scope="module", params=["envoy", "remora"])
def grpc_lab(request: pytest.FixtureRequest) -> Iterator[xl.SeedLab]:
    with xl.seed_lab(request.param, r"Peer=ipv4:127\.0\.0\.6:\d+", seed=xl.GRPC) as g:
        yield g


def _probe_checks(doc: dict[str, Any], app_sees: str) -> None:
    live, verdict = doc["live"], doc["verdict"]
    assert live["destination"]["protocol"] == "GRPC"
    probe = live["probe"]
    assert (probe["protocol"], probe["grpc"], probe["method"]) == ("HTTP/2", True, "POST")
    assert (probe["status"], probe["grpc_status"], probe["error"]) == (200, 0, ""), probe
    # the probe's own line in the server sidecar's log: HTTP/2 on the way in
    [line] = live["server_access_log"]
    assert line["request_id"] == probe["request_id"]
    assert (line["method"], line["path"], line["protocol"]) == (
        "POST", demo_grpc.METHOD, "HTTP/2")
    assert line["upstream_cluster"] == "inbound|18080||"
    assert line["upstream_local_address"].startswith(f"{app_sees}:")
    assert verdict["app_sees"] == app_sees and verdict["confirmed"] is True
    # the verdict names HTTP/2 and both confirmations: the access log and the app's line
    assert re.match(r"access log line \d+ \(HTTP/2\): UPSTREAM_LOCAL_ADDRESS "
                    + re.escape(line["upstream_local_address"]), verdict["confirmation"])
    assert verdict["confirmation"].endswith(
        f"the app's own log prints Peer=ipv4:{line['upstream_local_address']}")
    assert live["app_log_line"] == (f"Method={demo_grpc.METHOD}, "
                                    f"Peer=ipv4:{line['upstream_local_address']}")
    assert any(n.startswith("the port's protocol is GRPC (Istio's protocol selection") and
               "the probe was a gRPC call over HTTP/2 (h2c, prior knowledge)" in n and
               f"logged it as HTTP/2 (access log line {line['line']})" in n
               for n in live["notes"]), live["notes"]


def test_redirect_grpc_probe_the_app_sees_127_0_0_6(grpc_lab: xl.SeedLab) -> None:
    doc = grpc_lab.explain_json("--path", demo_grpc.METHOD)
    assert doc["mode"] == "REDIRECT"
    assert doc["live"]["client_pod"]["ip"] == CLIENT_IP
    _probe_checks(doc, "127.0.0.6")
    assert doc["verdict"]["sees_client"] is False


def test_grpc_text_output_and_health_check_default(grpc_lab: xl.SeedLab) -> None:
    out = grpc_lab.explain("--path", demo_grpc.METHOD)
    assert re.search(r"probe: POST http://simple-grpc-server-svc\.demo-to:18080/remora\.demo"
                     r"\.Simple/Sauth \(gRPC over HTTP/2, h2c\) -> HTTP/2 200, grpc-status 0 "
                     r"OK \(\d+ ms, x-request-id [0-9a-f-]{36}\)", out), out
    assert "   the app sees 127.0.0.6 (not the client 10.20.0.78)" in out
    assert re.search(r"   confirmed: access log line \d+ \(HTTP/2\): UPSTREAM_LOCAL_ADDRESS "
                     r"127\.0\.0\.6:\d+", out)
    # without --path the probe is gRPC's health check, which the demo server does not
    # implement: grpcio's UNIMPLEMENTED, still an answer from the app through both sidecars
    doc = grpc_lab.explain_json()
    probe = doc["live"]["probe"]
    assert probe["url"].endswith("/grpc.health.v1.Health/Check")
    assert (probe["status"], probe["grpc_status"]) == (200, 12)
    [line] = doc["live"]["server_access_log"]
    assert (line["path"], line["protocol"], line["response_code"]) == (
        "/grpc.health.v1.Health/Check", "HTTP/2", "200")
    assert doc["verdict"]["app_sees"] == "127.0.0.6" and doc["verdict"]["confirmed"] is True


def test_tproxy_patch_grpc_probe_the_app_sees_the_client(grpc_lab: xl.SeedLab) -> None:
    """Last: it changes the lab (the seed's own fix, then a rollout)."""
    grpc_lab.tproxy_patch(rf"Peer=ipv4:{re.escape(CLIENT_IP)}:\d+")
    doc = grpc_lab.explain_json("--path", demo_grpc.METHOD)
    assert doc["mode"] == "TPROXY"
    _probe_checks(doc, CLIENT_IP)
    assert doc["verdict"]["sees_client"] is True and doc["verdict"]["fixes"] == []
