"""`remora demo`: the seed's story, replayed end to end on a real lab.

The seed (tests/data/seed/000_*.txt) deploys a Go server and client into two namespaces with
Istio injection, sees the server log `RemoteAddr=127.0.0.6:PORT`, follows the request
through the sidecar's access log, the pod's nat table and the sidecar's listener and
cluster config to `upstream_bind_config 127.0.0.6`, then patches the Deployment to
`sidecar.istio.io/interceptionMode: TPROXY` and sees the client's own address. Every
step here runs the same `remora` command a user would type (as a subprocess, against the
same state directory), prints it with its output and one sentence saying what it shows,
and keeps the output for the tests (tests/netns/test_seed_demo*.py) to assert on.

With ``authz`` (`remora demo --authz`) the story also shows the point of it all (issue
5): an AuthorizationPolicy whose ``ipBlocks`` hold only the client pod's IP, and a second
pod (``intruder``) calling the same URL. The server sidecar lets the client in and
answers the intruder 403 ``RBAC: access denied`` in REDIRECT mode, where the app itself
sees 127.0.0.6 for everyone, and again after the TPROXY fix
(tests/netns/test_lab_authz.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path

from remora.errors import RemoraError
from remora.lab import session
from remora.lab import settings as lab_settings
from remora.lab.settings import LabSettings
from remora.node.client import NodeClient
from remora.node.config import DEFAULT_STATE_DIR, lab_command

Echo = Callable[[str], None]
NAMESPACES = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo-from
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo-to
  labels:
    istio-injection: enabled
"""
# The seed's fix, verbatim.
TPROXY_PATCH = ('{"spec":{"template":{"metadata":{"annotations":'
                '{"sidecar.istio.io/interceptionMode":"TPROXY"}}}}}')
POLICY_NAME = "allow-simple-client"
# In a dual-stack lab: the seed's service is SingleStack (no ipFamilyPolicy, as Kubernetes
# defaults it), so the demo adds a service for both families beside it.
DUAL_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: simple-server-dual
  namespace: demo-to
spec:
  ipFamilyPolicy: PreferDualStack
  selector:
    web: server
  ports:
  - port: 18080
"""
INTRUDER = "intruder"


def allow_policy(client_ip: str) -> str:
    """ALLOW only the client pod's address at the server (the TCP peer the server
    sidecar sees: ipBlocks -> Envoy's direct_remote_ip); /128 for an IPv6 client."""
    host = "/128" if ":" in client_ip else "/32"
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {POLICY_NAME}
  namespace: demo-to
spec:
  selector:
    matchLabels:
      web: server
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["{client_ip}{host}"]
"""


# A second caller in the client's namespace, with its own IP: the seed's client image.
INTRUDER_POD = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {INTRUDER}
  namespace: demo-from
  labels:
    web: intruder
spec:
  containers:
  - name: demo
    image: vasth/simple-client
"""


@dataclass(frozen=True)
class Family:
    """What the story says and looks for in one IP family: the address the inbound
    sidecar binds (Istio's "6 is the magical number": 127.0.0.6, ::6), the rules' tool."""

    name: str  # ipv4 | ipv6 | dual (the story runs over the primary family, IPv4, in dual)
    passthrough: str
    iptables: str

    def address(self, ip: str) -> str:
        """IP as an access log or Go's RemoteAddr prints it before :PORT."""
        return f"[{ip}]" if ":" in ip else ip


FAMILIES = {"ipv4": Family("ipv4", "127.0.0.6", "iptables"),
            "ipv6": Family("ipv6", "::6", "ip6tables"),
            "dual": Family("dual", "127.0.0.6", "iptables")}


@dataclass
class DemoResult:
    server_pod: str = ""
    server_ip: str = ""
    client_pod: str = ""
    client_ip: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # step name -> command output
    tproxy_pod: str = ""
    tproxy_ip: str = ""
    intruder_ip: str = ""
    ip_family: str = "ipv4"


@contextlib.contextmanager
def seed_paths() -> Iterator[tuple[Path, Path]]:
    root = package_files.files("remora.lab") / "seed"
    with package_files.as_file(root / "server.yaml") as server, \
            package_files.as_file(root / "client.yaml") as client:
        yield Path(server), Path(client)


class Demo:
    def __init__(self, state_dir: Path, echo: Echo, timeout: float = 60.0) -> None:
        self.state_dir = state_dir
        self.echo = echo
        self.timeout = timeout
        self.result = DemoResult()
        self.env = {**os.environ, "REMORA_STATE_DIR": str(state_dir)}
        self.step_no = 0
        self.family = FAMILIES["ipv4"]

    # -- output ------------------------------------------------------------------------------
    def step(self, sentence: str) -> None:
        self.step_no += 1
        self.echo("")
        self.echo(f"==> {self.step_no}. {sentence}")

    def remora(self, key: str, *args: str, stdin: str | None = None, show: str = "",
               quiet: bool = False) -> str:
        """Run `remora ARGS` as the user would; print the command and its output."""
        shown = show or " ".join(_quote(a) for a in args)
        if not quiet:
            self.echo(f"$ remora {shown}")
        proc = subprocess.run([sys.executable, "-m", "remora", *args], input=stdin,
                              capture_output=True, text=True, env=self.env,
                              timeout=self.timeout + 30, check=False)
        out = proc.stdout + proc.stderr
        for line in out.rstrip("\n").splitlines() if not quiet or proc.returncode else []:
            self.echo(line)
        if proc.returncode != 0:
            last = out.strip().splitlines()[-1] if out.strip() else ""
            raise RemoraError(f"`remora {shown}` failed (exit {proc.returncode}): "
                              f"{last.removeprefix('remora: error: ')}",
                              "the lab is left as it is for a look; "
                              f"`{lab_command('down', self.state_dir)}` removes it")
        self.result.outputs[key] = proc.stdout
        return proc.stdout

    # -- waiting on the running pods -------------------------------------------------------
    def client(self) -> NodeClient:
        return session.connect(self.state_dir)

    def pod(self, namespace: str, label: str) -> tuple[str, str]:
        pods = [p for p in self.client().get("Pod", namespace)
                if "deletionTimestamp" not in p["metadata"]
                and (p["metadata"].get("labels") or {}).get("web") == label]
        if not pods:
            raise RemoraError(f"no {label} pod in {namespace}", "see `remora get pods -A`")
        return pods[0]["metadata"]["name"], pods[0]["status"].get("podIP") or ""

    def wait_log(self, namespace: str, pod: str, container: str | None, pattern: str,
                 count: int = 2, tail: int | None = None, also: tuple[str, ...] = ()) -> None:
        """Wait (bounded) until the log holds COUNT lines matching PATTERN and one for each
        of ALSO, within its last TAIL lines when given: what a step is about to show with
        `logs --tail TAIL` must be there first. Sidecars write their access log on a
        timer (Envoy flushes its file every second or so), so a request answered a moment
        ago may not be in the file yet."""
        deadline = time.monotonic() + self.timeout
        regex = re.compile(pattern)
        others = [re.compile(p) for p in also]
        text = ""
        while time.monotonic() < deadline:
            text = self.client().logs(namespace, pod, container, tail=tail)["text"]
            if len(regex.findall(text)) >= count and all(o.search(text) for o in others):
                return
            time.sleep(0.3)
        last = (text.strip().splitlines() or ["nothing"])[-1]
        raise RemoraError(f"pod {namespace}/{pod} ({container or 'app'}) logged no line "
                          f"matching {pattern!r} in {self.timeout:.0f}s (last: {last[:300]})",
                          f"see `remora logs -n {namespace} {pod} -c istio-proxy`")

    def reset(self) -> None:
        """A lab that ran the demo before: remove its demo namespaces first."""
        client = self.client()
        mine = {d["metadata"]["namespace"] for d in client.get("Deployment")} & {
            "demo-from", "demo-to"}
        if not mine:
            return
        self.step("The lab already holds the demo's namespaces: remove them to start clean.")
        for ns in sorted(mine):
            self.remora(f"delete-{ns}", "delete", "namespace", ns)
        deadline = time.monotonic() + self.timeout
        while any(p["metadata"]["namespace"] in mine for p in client.get("Pod")):
            if time.monotonic() > deadline:
                raise RemoraError("old demo pods did not go away",
                                  f"run `{lab_command('down', self.state_dir)}` first")
            time.sleep(0.2)


def _quote(arg: str) -> str:
    return f"'{arg}'" if re.search(r"[\s{}|*\"]", arg) else arg


def run(state_dir: Path, settings: LabSettings, *, prefix: str, pod_ip_start: int = 77,
        cleanup: bool = False, timeout: float = 60.0, echo: Echo = print,
        given: frozenset[str] = frozenset({"sidecar", "mtls"}),
        authz: bool = False) -> DemoResult:
    """Replay the seed; returns what each step showed. GIVEN: the settings the user chose
    explicitly (refused when a running lab does otherwise). AUTHZ adds the
    AuthorizationPolicy steps (source IP enforced by the server sidecar)."""
    started = time.monotonic()
    if authz and not settings.mtls:  # before anything starts (the CLI checks it too)
        raise RemoraError("--authz needs mTLS, and --no-mtls turns it off",
                          "drop --no-mtls, or run `remora demo --no-mtls` without --authz")
    session.refuse_differences(state_dir, settings, set(given), "remora demo")
    _, fresh = session.up(state_dir, settings, prefix=prefix, pod_ip_start=pod_ip_start,
                          command="remora demo")
    running = lab_settings.load(state_dir)
    stack = {"ipv4": "", "ipv6": ", IPv6", "dual": ", dual stack"}[running.ip_family]
    echo(f"remora demo: lab at {state_dir} ({'started' if fresh else 'already running'}), "
         f"sidecar: {'real Envoy' if running.sidecar == 'envoy' else 'remora proxy'}{stack}")
    if authz and not running.mtls:
        raise RemoraError("--authz needs the lab's mTLS (AuthorizationPolicy is compiled into "
                          "the sidecars only with workload certificates)",
                          f"`{lab_command('down', state_dir)}`, then run the demo without "
                          "--no-mtls")
    demo = Demo(state_dir, echo, timeout)
    demo.family = FAMILIES[running.ip_family]
    demo.result.ip_family = running.ip_family
    try:
        if not fresh:
            demo.reset()
        _story(demo, authz)
    except BaseException:
        if cleanup:
            session.down(state_dir)
        raise
    echo("")
    echo(f"The seed's story took {time.monotonic() - started:.1f}s.")
    if cleanup:
        session.down(state_dir)
        echo("Lab removed (--cleanup).")
    else:
        where = "" if Path(state_dir) == DEFAULT_STATE_DIR else \
            f" --state-dir {state_dir}"
        echo("The lab is still running: look around with `remora get pods -A`, "
             "`remora logs`, `remora exec` and `remora proxy-config`;")
        if importlib.util.find_spec("remora.cli.explain") is not None:
            r = demo.result
            echo(f"ask why with `remora explain source-ip --from {r.client_pod} -n demo-from "
                 f"--to simple-server-svc.demo-to:18080 --path /common/sauth{where}`;")
        echo(f"remove it all with `{lab_command('down', state_dir)}`.")
    return demo.result


def _story(d: Demo, authz: bool = False) -> None:
    r, f = d.result, d.family
    bind = f.passthrough
    d.step("Create demo-from and demo-to with sidecar injection enabled "
           "(kubectl create ns + label istio-injection=enabled).")
    d.remora("namespaces", "apply", "-f", "-", stdin=NAMESPACES)
    with seed_paths() as (server_yaml, client_yaml):
        d.step("Apply the seed's server.yaml unchanged: istio-init and istio-proxy are "
               "injected, the pod starts and gets Ready.")
        d.remora("server", "apply", "-f", str(server_yaml), "--wait",
                 "--timeout", f"{d.timeout:g}", show="apply -f server.yaml --wait")
        d.step("Apply the seed's client.yaml unchanged: it calls the server once a second.")
        d.remora("client", "apply", "-f", str(client_yaml), "--wait",
                 "--timeout", f"{d.timeout:g}", show="apply -f client.yaml --wait")
    r.server_pod, r.server_ip = d.pod("demo-to", "server")
    r.client_pod, r.client_ip = d.pod("demo-from", "client")
    d.step("The client pod's IP, the server pod's IP and the service's ClusterIP.")
    d.remora("client-pods", "get", "po", "-n", "demo-from", "-o", "wide")
    d.remora("server-pods", "get", "po", "-n", "demo-to", "-o", "wide")
    d.remora("services", "get", "svc", "-n", "demo-to")
    d.step("The istio-init container the injector added: istio-iptables with REDIRECT "
           "(-m), inbound 15006 (-z), outbound 15001 (-p), the proxy's uid 1337 (-u).")
    pod_json = json.loads(d.remora("server-json", "get", "po", "-n", "demo-to", r.server_pod,
                                   "-o", "json", quiet=True))
    d.echo(f"$ remora get po -n demo-to {r.server_pod} -o json | jq '.spec.initContainers[]'")
    for init in pod_json["spec"].get("initContainers") or []:
        first = ("name", "image", "args")  # the API server's field order, as jq shows it
        init = {**{k: init[k] for k in first if k in init},
                **{k: v for k, v in init.items() if k not in first}}
        for line in json.dumps(init, indent=2).splitlines():
            d.echo(line)
    d.wait_log("demo-to", r.server_pod, None, rf"RemoteAddr={re.escape(f.address(bind))}:\d+")
    d.step(f"The problem: the server logs RemoteAddr={f.address(bind)}, not the client's "
           f"{r.client_ip}.")
    d.remora("server-log", "logs", "-n", "demo-to", "-l", "web=server", "--tail", "5")
    d.wait_log("demo-to", r.server_pod, "istio-proxy", r"inbound\|18080\|\|")
    d.step("The server sidecar's access log: the request came from the client pod "
           f"(DOWNSTREAM_REMOTE_ADDRESS) and went to the app from {bind} "
           "(UPSTREAM_LOCAL_ADDRESS).")
    d.remora("access-log", "logs", "-n", "demo-to", "-l", "web=server", "-c", "istio-proxy",
             "--tail", "3")
    host = "/128" if ":" in bind else ""
    d.step(f"The nat table istio-init wrote{' in ip6tables' if f.name == 'ipv6' else ''} "
           "(REDIRECT mode): inbound TCP goes to 15006, and "
           f"`-o lo -s {bind}{host} RETURN` lets the sidecar's own connection to the app "
           "through.")
    d.remora("nat", "exec", "-n", "demo-to", r.server_pod, "--", f.iptables, "-t", "nat", "-L",
             "-v")
    d.step("The sidecar's virtualInbound listener (15006) sends port 18080 to the cluster "
           "inbound|18080||.")
    d.remora("listeners", "proxy-config", "listener", "-n", "demo-to", r.server_pod,
             "--port", "15006")
    d.step(f"inbound|18080|| is ORIGINAL_DST with upstreamBindConfig {bind}: the address "
           "the server sees.")
    d.remora("clusters", "proxy-config", "cluster", "-n", "demo-to", r.server_pod, "--fqdn",
             "inbound|18080||")
    d.remora("cluster-json", "proxy-config", "cluster", "-n", "demo-to", r.server_pod,
             "--fqdn", "inbound|18080||", "-o", "json")
    if authz:
        _authz_redirect(d)
    d.step("The fix: switch the server's interception mode to TPROXY; the Deployment rolls "
           "out a new pod with the new capture rules.")
    d.remora("patch", "patch", "deployment", "-n", "demo-to", "simple-server", "-p",
             TPROXY_PATCH)
    d.remora("rollout", "rollout", "status", "deployment/simple-server", "-n", "demo-to",
             "--timeout", f"{d.timeout:g}")
    r.tproxy_pod, r.tproxy_ip = d.pod("demo-to", "server")
    d.wait_log("demo-to", r.tproxy_pod, None,
               rf"RemoteAddr={re.escape(f.address(r.client_ip))}:\d+")
    d.step(f"After the fix the server logs the client pod's own address, {r.client_ip}.")
    d.remora("tproxy-pods", "get", "po", "-n", "demo-to", "-o", "wide")
    d.remora("tproxy-log", "logs", "-n", "demo-to", "-l", "web=server", "--tail", "5")
    d.wait_log("demo-to", r.tproxy_pod, "istio-proxy", _access_200(d), count=1, tail=2)
    d.remora("tproxy-access-log", "logs", "-n", "demo-to", "-l", "web=server", "-c",
             "istio-proxy", "--tail", "2")
    d.step("TPROXY captures inbound traffic in the mangle table: ISTIO_TPROXY hands it to "
           "15006 with mark 0x539, and original_src connects to the app as the client.")
    d.remora("mangle", "exec", "-n", "demo-to", r.tproxy_pod, "--", f.iptables, "-t",
             "mangle", "-L", "-v")
    if authz:
        _authz_tproxy(d)
    if f.name == "dual":
        _dual_stack(d)


def _dual_stack(d: Demo) -> None:
    r = d.result
    d.step("Dual stack: a PreferDualStack service gets a ClusterIP of each family (the seed's "
           "service, without ipFamilyPolicy, is SingleStack IPv4).")
    d.remora("dual-service", "apply", "-f", "-", stdin=DUAL_SERVICE,
             show="apply -f simple-server-dual.yaml  # ipFamilyPolicy: PreferDualStack")
    svc = json.loads(d.remora("dual-json", "get", "svc", "-n", "demo-to", "simple-server-dual",
                              "-o", "json", quiet=True))
    d.remora("dual-describe", "describe", "svc", "-n", "demo-to", "simple-server-dual")
    d.step("The client pod calls the service on each ClusterIP: its sidecar takes both "
           "families, and the server answers both.")
    for ip in reversed(svc["spec"]["clusterIPs"]):
        host = f"[{ip}]" if ":" in ip else ip
        d.remora(f"dual-curl-{'ipv6' if ':' in ip else 'ipv4'}", "exec", "-n", "demo-from",
                 r.client_pod, "--", "curl", "-sS", "-g", "--max-time", "5",
                 f"http://{host}:18080/common/sauth")
    pattern = r"outbound\|18080\|\|simple-server-dual\.demo-to\.svc\.cluster\.local"
    d.wait_log("demo-from", r.client_pod, "istio-proxy", pattern, count=2)
    d.step("The client sidecar's access log names the ClusterIP the app dialled "
           "(DOWNSTREAM_LOCAL_ADDRESS), one line per family.")
    # the client app's own requests (to the seed's service) interleave: keep ours, as grep
    text = d.remora("dual-client-access", "logs", "-n", "demo-from", r.client_pod, "-c",
                    "istio-proxy", quiet=True)
    mine = [line for line in text.splitlines() if "simple-server-dual" in line]
    d.echo(f"$ remora logs -n demo-from {r.client_pod} -c istio-proxy | grep simple-server-dual")
    for line in mine:
        d.echo(line)
    r.outputs["dual-access-log"] = "".join(line + "\n" for line in mine)
    d.step("What the server sees for each: as istiod with ISTIO_DUAL_STACK, the client "
           "sidecar's EDS lists the server pod once, at its primary address (IPv4) with "
           "the IPv6 one in additional_addresses, tried only if the first fails (Happy "
           "Eyeballs). So both requests reach the server over IPv4, and the TPROXY server "
           "sees the client's IPv4 address for both: the ClusterIP dialled does not choose "
           "the family between the sidecars.")
    inbound = r'"curl/[^"]*" .* inbound\|18080\|\| '
    d.wait_log("demo-to", r.tproxy_pod, "istio-proxy", inbound, count=2)
    text = d.remora("dual-server-access", "logs", "-n", "demo-to", r.tproxy_pod, "-c",
                    "istio-proxy", quiet=True)
    theirs = [line for line in text.splitlines() if re.search(inbound, line)][-2:]
    d.echo(f"$ remora logs -n demo-to {r.tproxy_pod} -c istio-proxy | grep curl | tail -2")
    for line in theirs:
        d.echo(line)
    r.outputs["dual-server-access-log"] = "".join(line + "\n" for line in theirs)


def _access_200(d: Demo) -> str:
    """A server sidecar access log line of a request from the client pod, let in (its
    DOWNSTREAM_REMOTE_ADDRESS is the client's in both modes)."""
    return (r'" 200 .* inbound\|18080\|\| \S+ \S+ '
            rf"{re.escape(d.family.address(d.result.client_ip))}:\d+ ")


def _access_403(d: Demo) -> str:
    """A server sidecar access log line of a denied intruder request (no ALLOW policy
    matched: Envoy names none)."""
    return (r'" 403 \S+ rbac_access_denied_matched_policy\[none\] .* '
            rf"{re.escape(d.family.address(d.result.intruder_ip))}:\d+ ")


def _authz_redirect(d: Demo) -> None:
    r = d.result
    d.step(f"Authorization by source IP: allow only the client pod ({r.client_ip}) to call "
           "the server, and start a second caller, intruder, with another address.")
    host = "/128" if ":" in r.client_ip else "/32"
    d.remora("policy", "apply", "-f", "-", stdin=allow_policy(r.client_ip),
             show=f"apply -f allow-simple-client.yaml  # ipBlocks: [{r.client_ip}{host}]")
    d.remora("intruder", "apply", "-f", "-", "--wait", "--timeout", f"{d.timeout:g}",
             stdin=INTRUDER_POD, show="apply -f intruder.yaml --wait")
    _, r.intruder_ip = d.pod("demo-from", "intruder")
    d.wait_log("demo-from", INTRUDER, None, r"RBAC: access denied", count=1)
    d.wait_log("demo-to", r.server_pod, "istio-proxy", _access_403(d), count=1, tail=4,
               also=(_access_200(d),))
    d.step(f"Even in REDIRECT mode, where the app sees {d.family.passthrough} for every "
           "caller, the server "
           f"sidecar sees the real peer: 200 for {r.client_ip}, 403 `RBAC: access denied` "
           f"for the intruder's {r.intruder_ip}.")
    d.remora("authz-access-log", "logs", "-n", "demo-to", "-l", "web=server", "-c",
             "istio-proxy", "--tail", "4")
    # the whole log, kept (not shown) for the tests: this pod is replaced by the TPROXY fix
    d.remora("authz-redirect-access", "logs", "-n", "demo-to", r.server_pod, "-c",
             "istio-proxy", quiet=True)
    d.remora("intruder-log", "logs", "-n", "demo-from", INTRUDER, "--tail", "2")


def _authz_tproxy(d: Demo) -> None:
    r = d.result
    # the lines this step shows: the client let in and the intruder refused, both in the
    # four last lines (Envoy writes them when it flushes, not when it answers)
    d.wait_log("demo-to", r.tproxy_pod, "istio-proxy", _access_403(d), count=1, tail=4,
               also=(_access_200(d),))
    d.step("With TPROXY the same policy still holds at the sidecar (403 for the intruder), "
           "and only now could an allowlist inside the app work, since it sees the client's "
           "own address.")
    d.remora("authz-tproxy-access-log", "logs", "-n", "demo-to", "-l", "web=server", "-c",
             "istio-proxy", "--tail", "4")
    d.remora("authz-policies", "get", "authorizationpolicies", "-n", "demo-to")
