"""`remora demo --grpc`: the seed's story told over gRPC (HTTP/2), on either sidecar.

The same investigation as remora.lab.demo, with the gRPC versions of the seed's apps
(remora.apps.grpc_server / grpc_client, images ``vasth/simple-grpc-server`` and
``vasth/simple-grpc-client``) and a Service port named ``grpc``, so Istio's protocol
selection makes the port GRPC: HTTP/2 from the client's sidecar to the server's (mTLS,
ALPN ``istio-h2``) and from there to the app (h2c, an explicitly HTTP/2 inbound cluster).
The observations:

- the server logs ``Peer=ipv4:127.0.0.6:PORT`` (grpcio's ``context.peer()``): the
  inbound cluster's ``upstream_bind_config``, as in the seed;
- the client logs ``status=OK code=0`` for each call: the ``grpc-status`` trailer came
  back through both sidecars (Istio's default access-log format has no %GRPC_STATUS%,
  so the client is where the status shows);
- the server sidecar's access log says ``"POST /remora.demo.Simple/Sauth HTTP/2" 200``;
- the inbound cluster JSON holds ``explicitHttpConfig.http2ProtocolOptions`` next to
  ``upstreamBindConfig`` 127.0.0.6;
- after the seed's TPROXY patch the server logs ``Peer=ipv4:<client pod IP>:PORT``.

Both sidecars tell it (`remora proxy`'s HTTP/2 is in remora.proxy.http2);
tests/netns/test_seed_demo_grpc.py runs the story on each, with and without mTLS.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from importlib import resources as package_files
from pathlib import Path

from remora.lab import session
from remora.lab import settings as lab_settings
from remora.lab.demo import NAMESPACES, TPROXY_PATCH, Demo, DemoResult, Echo
from remora.lab.settings import LabSettings
from remora.node.config import lab_command

SERVER, CLIENT = "simple-grpc-server", "simple-grpc-client"
SERVICE = "simple-grpc-server-svc"
METHOD = "/remora.demo.Simple/Sauth"


@contextlib.contextmanager
def grpc_paths() -> Iterator[tuple[Path, Path]]:
    root = package_files.files("remora.lab") / "grpc"
    with package_files.as_file(root / "grpc-server.yaml") as server, \
            package_files.as_file(root / "grpc-client.yaml") as client:
        yield Path(server), Path(client)


def run(state_dir: Path, settings: LabSettings, *, prefix: str, pod_ip_start: int = 77,
        cleanup: bool = False, timeout: float = 60.0, echo: Echo = print,
        given: frozenset[str] = frozenset({"sidecar", "mtls"})) -> DemoResult:
    """Tell the seed's story over gRPC; returns what each step showed."""
    started = time.monotonic()
    session.refuse_differences(state_dir, settings, set(given), "remora demo --grpc")
    _, fresh = session.up(state_dir, settings, prefix=prefix, pod_ip_start=pod_ip_start,
                          command="remora demo --grpc")
    running = lab_settings.load(state_dir)
    echo(f"remora demo --grpc: lab at {state_dir} "
         f"({'started' if fresh else 'already running'}), "
         f"sidecar: {'real Envoy' if running.sidecar == 'envoy' else 'remora proxy'}")
    demo = Demo(state_dir, echo, timeout)
    try:
        if not fresh:
            demo.reset()
        _story(demo, running.mtls)
    except BaseException:
        if cleanup:
            session.down(state_dir)
        raise
    echo("")
    echo(f"The seed's story over gRPC took {time.monotonic() - started:.1f}s.")
    if cleanup:
        session.down(state_dir)
        echo("Lab removed (--cleanup).")
    else:
        echo("The lab is still running: look around with `remora get pods -A`, "
             "`remora logs` and `remora proxy-config`;")
        echo(f"remove it all with `{lab_command('down', state_dir)}`.")
    return demo.result


def _access_line(client_ip: str) -> str:
    """The server sidecar's line of one call from the client pod: HTTP/2, 200."""
    return (rf'"POST {re.escape(METHOD)} HTTP/2" 200 .* inbound\|18080\|\| \S+ \S+ '
            rf"{re.escape(client_ip)}:\d+ ")


def _story(d: Demo, mtls: bool = True) -> None:
    r = d.result
    d.step("Create demo-from and demo-to with sidecar injection enabled.")
    d.remora("namespaces", "apply", "-f", "-", stdin=NAMESPACES)
    with grpc_paths() as (server_yaml, client_yaml):
        d.step("Apply grpc-server.yaml: the seed's server over gRPC, behind a Service whose "
               "port is named `grpc` (Istio: protocol GRPC, HTTP/2 end to end).")
        d.remora("server", "apply", "-f", str(server_yaml), "--wait",
                 "--timeout", f"{d.timeout:g}", show="apply -f grpc-server.yaml --wait")
        d.step("Apply grpc-client.yaml: it calls the server once a second over one HTTP/2 "
               "channel.")
        d.remora("client", "apply", "-f", str(client_yaml), "--wait",
                 "--timeout", f"{d.timeout:g}", show="apply -f grpc-client.yaml --wait")
    r.server_pod, r.server_ip = d.pod("demo-to", "grpc-server")
    r.client_pod, r.client_ip = d.pod("demo-from", "grpc-client")
    d.step("The client pod's IP, the server pod's IP and the service (port name grpc).")
    d.remora("client-pods", "get", "po", "-n", "demo-from", "-o", "wide")
    d.remora("server-pods", "get", "po", "-n", "demo-to", "-o", "wide")
    d.remora("services", "get", "svc", "-n", "demo-to")
    d.wait_log("demo-to", r.server_pod, None, r"Peer=ipv4:127\.0\.0\.6:\d+")
    d.step(f"The problem, over gRPC: the server's context.peer() is 127.0.0.6, not the "
           f"client's {r.client_ip}.")
    d.remora("server-log", "logs", "-n", "demo-to", "-l", "web=grpc-server", "--tail", "5")
    d.wait_log("demo-from", r.client_pod, None, r"status=OK code=0 ", count=1)
    d.step("Each call returns grpc-status 0 (OK) to the client: the trailer crossed both "
           "sidecars (Istio's default access-log line has no %GRPC_STATUS%).")
    d.remora("client-log", "logs", "-n", "demo-from", "-l", "web=grpc-client", "--tail", "3")
    d.wait_log("demo-to", r.server_pod, "istio-proxy", _access_line(r.client_ip), count=1,
               tail=3)
    how = "over mTLS (SNI outbound_.18080_._.simple-grpc-server-svc...)" if mtls else \
        "in plain text (--no-mtls: h2c between the sidecars, no SNI)"
    d.step("The server sidecar's access log: HTTP/2, 200, from the client pod "
           "(DOWNSTREAM_REMOTE_ADDRESS) to the app from 127.0.0.6 (UPSTREAM_LOCAL_ADDRESS), "
           f"{how}.")
    d.remora("access-log", "logs", "-n", "demo-to", "-l", "web=grpc-server", "-c",
             "istio-proxy", "--tail", "3")
    d.step("virtualInbound sends port 18080 to inbound|18080||: HTTP chains for mTLS "
           "(ALPN istio-h2 among them) and plain text.")
    d.remora("listeners", "proxy-config", "listener", "-n", "demo-to", r.server_pod,
             "--port", "15006")
    d.step("inbound|18080|| is HTTP/2 to the app (explicitHttpConfig http2ProtocolOptions) "
           "and binds 127.0.0.6: the address the server sees.")
    d.remora("cluster-json", "proxy-config", "cluster", "-n", "demo-to", r.server_pod,
             "--fqdn", "inbound|18080||", "-o", "json")
    d.step("The fix, as in the seed: TPROXY for the server; the Deployment rolls out a new "
           "pod.")
    d.remora("patch", "patch", "deployment", "-n", "demo-to", SERVER, "-p", TPROXY_PATCH)
    d.remora("rollout", "rollout", "status", f"deployment/{SERVER}", "-n", "demo-to",
             "--timeout", f"{d.timeout:g}")
    r.tproxy_pod, r.tproxy_ip = d.pod("demo-to", "grpc-server")
    d.wait_log("demo-to", r.tproxy_pod, None,
               rf"Peer=ipv4:{re.escape(r.client_ip)}:\d+")
    d.step(f"After the fix the server's context.peer() is the client pod's own address, "
           f"{r.client_ip}.")
    d.remora("tproxy-pods", "get", "po", "-n", "demo-to", "-o", "wide")
    d.remora("tproxy-log", "logs", "-n", "demo-to", "-l", "web=grpc-server", "--tail", "5")
    d.wait_log("demo-to", r.tproxy_pod, "istio-proxy", _access_line(r.client_ip), count=1,
               tail=2)
    d.remora("tproxy-access-log", "logs", "-n", "demo-to", "-l", "web=grpc-server", "-c",
             "istio-proxy", "--tail", "2")
    d.remora("tproxy-client-log", "logs", "-n", "demo-from", "-l", "web=grpc-client",
             "--tail", "2")
