"""The node daemon: restarts, adoption after its own restart, hooks, delete and down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from remora.errors import RemoraError
from remora.node import naming, netlink, process
from remora.node.hooks import ClusterSnapshot, PodContext, PodSetup
from remora.node.probes import Probe
from remora.node.process import ProcessSpec
from remora.node.testing import TempNode

pytestmark = pytest.mark.netns


def pod(name: str, argv: list[str], ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"containers": [{"name": "main", "image": "x", "command": argv}], **spec}}


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def get_pod(node: TempNode, name: str, ns: str = "default") -> dict[str, Any] | None:
    return next((p for p in node.client.get("Pod", ns) if p["metadata"]["name"] == name), None)


def test_crashing_container_is_restarted_and_counted() -> None:
    with TempNode() as node:
        node.client.apply([pod("crash", ["sh", "-c", "echo run $$; exit 3"])])

        def restarted_twice() -> dict[str, Any] | None:
            p = get_pod(node, "crash")
            return p if p and p["remora"]["restarts"] >= 2 else None

        p = wait_for(restarted_twice, timeout=10)
        status = p["status"]["containerStatuses"][0]
        assert status["restartCount"] >= 2
        assert p["remora"]["status"] in ("CrashLoopBackOff", "Error", "Running")
        logs = node.client.logs("default", "crash")
        previous = node.client.logs("default", "crash", previous=True)
        assert "run " in previous["text"]  # the last run before this one kept its log
        assert Path(logs["path"]).parent == Path(previous["path"]).parent
    assert not node.leftovers()


def test_status_through_init_and_a_crash_loop_reads_like_kubectl() -> None:
    spec = pod("phases", ["sleep", "300"])
    spec["spec"]["initContainers"] = [{"name": "init", "image": "x",
                                       "command": ["sleep", "1.5"]}]
    spec["spec"]["containers"].append({"name": "crash", "image": "x",
                                       "command": ["sh", "-c", "sleep 0.2; exit 3"]})
    with TempNode() as node:
        node.client.apply([spec])
        seen = []
        last: dict[str, Any] = {}

        def columns() -> tuple[str, str] | None:
            p = get_pod(node, "phases")
            if p is None:
                return None
            now = (p["remora"]["ready"], p["remora"]["status"])
            if not seen or seen[-1] != now:
                seen.append(now)
            last.update(p)
            return now if now[1] == "CrashLoopBackOff" else None

        assert wait_for(columns, timeout=15) == ("1/2", "CrashLoopBackOff")
        # READY counts both app containers from the start; no bare `Init`, no `0/0`
        assert ("0/2", "Init:0/1") in seen, seen
        assert all(ready.endswith("/2") and status != "Init" for ready, status in seen), seen
        crash = last["status"]["containerStatuses"][1]
        assert crash["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert crash["lastState"]["terminated"]["exitCode"] == 3
    assert not node.leftovers()


def test_daemon_restart_adopts_running_pods() -> None:
    with TempNode() as node:
        node.client.apply([pod("steady", ["sleep", "300"]), pod("other", ["sleep", "301"])])
        before = {p["metadata"]["name"]: p for p in node.client.wait_ready(timeout=15)}
        pids = {n: p["status"]["containerStatuses"][0]["remora"]["pid"] for n, p in before.items()}
        for how in (signal.SIGTERM, signal.SIGKILL):
            os.kill(node.daemon_pid(), how)
            wait_for(lambda: not node.client.alive())
            node.start()
            after = {p["metadata"]["name"]: p for p in node.client.wait_ready(timeout=15)}
            assert {n: p["status"]["containerStatuses"][0]["remora"]["pid"]
                    for n, p in after.items()} == pids
            assert all(p["remora"]["restarts"] == 0 for p in after.values())
            assert {n: p["status"]["podIP"] for n, p in after.items()} == {
                n: p["status"]["podIP"] for n, p in before.items()}
        # an adopted process that dies is noticed and restarted
        os.kill(pids["steady"], signal.SIGKILL)
        p = wait_for(lambda: (x := get_pod(node, "steady")) and x["remora"]["restarts"] == 1
                     and x["status"]["ready"] and x)
        assert p["status"]["containerStatuses"][0]["remora"]["pid"] != pids["steady"]
    assert not node.leftovers()


def test_a_container_that_execs_another_program_is_adopted() -> None:
    # a launcher that execs the real program once the daemon has seen its own command line
    # (like a Python wrapper exec-ing a binary): same PID, same start time, new cmdline
    launcher = ("import os,time;time.sleep(0.6);"
                "os.execvp('sleep',['sleep','302'])")
    with TempNode() as node:
        node.client.apply([pod("wrapped", [sys.executable, "-c", launcher])])
        p = node.client.wait_ready(timeout=15)[0]
        pid = p["status"]["containerStatuses"][0]["remora"]["pid"]
        wait_for(lambda: process.cmdline(pid) == ["sleep", "302"])
        time.sleep(0.3)
        os.kill(node.daemon_pid(), signal.SIGTERM)
        wait_for(lambda: not node.client.alive())
        node.start()
        after = node.client.wait_ready(timeout=15)[0]
        status = after["status"]["containerStatuses"][0]
        assert (status["remora"]["pid"], status["restartCount"]) == (pid, 0)
        assert status["containerID"] == p["status"]["containerStatuses"][0]["containerID"]
        time.sleep(0.5)  # nothing started beside it: it is the only process in the pod
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        in_pod = [d for d in os.listdir("/proc") if d.isdigit()
                  and process.netns_inode(int(d)) == inode]
        assert in_pod == [str(pid)]
    assert not node.leftovers()


def test_pid_reuse_is_not_adopted() -> None:
    own = os.getpid()
    ticks = process.start_ticks(own)
    assert ticks is not None
    netns_ino = process.netns_inode(own)
    assert process.matches(own, ticks, netns_ino)
    assert not process.matches(own, ticks + 1, netns_ino)  # same PID, other start time
    assert not process.matches(own, ticks, (netns_ino or 0) + 1)  # not in the pod's netns


class RecordingSetup(PodSetup):
    """A lab-like setup: injects an init container and a 'sidecar' with a ready port."""

    def admit(self, pod: dict[str, Any], namespace: dict[str, Any] | None) -> dict[str, Any]:
        labels = (namespace or {}).get("metadata", {}).get("labels", {})
        if labels.get("istio-injection") != "enabled":
            return pod
        pod["spec"]["initContainers"] = [{"name": "istio-init", "image": "proxyv2",
                                          "command": ["sh", "-c", "echo init-ran"]}]
        pod["spec"]["containers"].append({"name": "istio-proxy", "image": "proxyv2"})
        return pod

    def prepare(self, ctx: PodContext) -> None:
        services = sorted(s["metadata"]["name"] for s in ctx.cluster.services)
        (ctx.pod_dir / "bootstrap.json").write_text(json.dumps({"ip": ctx.ip,
                                                                "services": services}))

    def process(self, ctx: PodContext, container: dict[str, Any], init: bool) -> ProcessSpec:
        if container["name"] != "istio-proxy":
            return super().process(ctx, container, init)
        # ready only once port 15021 accepts, and it opens after a delay
        code = ("import socket,time;time.sleep(0.5);s=socket.socket();"
                "s.bind(('127.0.0.1',15021));s.listen();time.sleep(300)")
        return ProcessSpec([sys.executable, "-c", code], env=dict(os.environ), gid=1337,
                           readiness=Probe("tcpSocket", port=15021, period=1))

    def cluster_changed(self, snapshot: ClusterSnapshot, pods: list[PodContext]) -> None:
        record = {f"{ns}/{svc}": sorted(e["ip"] for e in eps)
                  for (ns, svc), eps in snapshot.endpoints.items()}
        for ctx in pods:
            # written whole, then renamed: the test reads it while the reconciler may be
            # writing it again (a read between the truncation and the write saw "")
            tmp = ctx.pod_dir / "eds.json.tmp"
            tmp.write_text(json.dumps(record))
            tmp.replace(ctx.pod_dir / "eds.json")


def test_pod_setup_hooks_shape_the_pod() -> None:
    with TempNode(pod_setup=f"{__name__}:RecordingSetup") as node:
        node.client.apply([
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "mesh", "labels": {"istio-injection": "enabled"}}},
            pod("app", ["sleep", "300"], ns="mesh"),
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "app", "namespace": "mesh"},
             "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}},
        ])
        p = wait_for(lambda: (x := get_pod(node, "app", "mesh")) and x["remora"]["ready"] == "1/2"
                     and x)
        assert not p["status"]["ready"]  # the sidecar's port is not open yet
        p = node.client.wait_ready("mesh", timeout=10)[0]
        assert p["remora"]["ready"] == "2/2"
        assert [c["name"] for c in p["spec"]["containers"]] == ["main", "istio-proxy"]
        init = p["status"]["initContainerStatuses"][0]
        assert init["state"]["terminated"]["exitCode"] == 0
        assert node.client.logs("mesh", "app", "istio-init")["text"] == "init-ran\n"
        pod_dir = next((node.state_dir / "pods").iterdir())
        # prepare() already saw the service applied together with the pod
        assert json.loads((pod_dir / "bootstrap.json").read_text()) == {
            "ip": p["status"]["podIP"], "services": ["app"]}
        eds = wait_for(lambda: (pod_dir / "eds.json").exists() and json.loads(
            (pod_dir / "eds.json").read_text()).get("mesh/app"))
        assert eds == [p["status"]["podIP"]]
        # the sidecar process runs with group 1337
        pid = p["status"]["containerStatuses"][1]["remora"]["pid"]
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nGid:\t1337\t1337\t1337\t1337" in status
    assert not node.leftovers()


def test_delete_pod_releases_namespace_files_and_ip() -> None:
    with TempNode() as node:
        node.client.apply([pod("a", ["sleep", "300"])])
        first = node.client.wait_ready(timeout=10)[0]
        netns_name = first["remora"]["netns"]
        assert Path(f"/etc/netns/{netns_name}/resolv.conf").exists()
        pid = first["status"]["containerStatuses"][0]["remora"]["pid"]
        node.client.delete("Pod", "a")
        wait_for(lambda: get_pod(node, "a") is None)
        assert not Path(f"/run/netns/{netns_name}").exists()
        assert not Path(f"/etc/netns/{netns_name}").exists()
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
        node.client.apply([pod("b", ["sleep", "300"])])
        second = node.client.wait_ready(timeout=10)[0]
        assert second["status"]["podIP"] == first["status"]["podIP"]  # released, reused
    assert not node.leftovers()


class PushLogSetup(PodSetup):
    """Appends every push (the monotonic time it reached the hook, each Service's
    endpoint IPs) to pushes.log in each running pod's directory, as a sidecar's config
    would be rewritten."""

    def cluster_changed(self, snapshot: ClusterSnapshot, pods: list[PodContext]) -> None:
        line = json.dumps({"t": time.monotonic(),
                           "eps": {f"{ns}/{svc}": sorted(e["ip"] for e in eps)
                                   for (ns, svc), eps in snapshot.endpoints.items()}})
        for ctx in pods:
            with open(ctx.pod_dir / "pushes.log", "a") as f:
                f.write(line + "\n")


def test_a_deleted_endpoint_pod_serves_until_the_push_that_drops_it_was_read() -> None:
    """A deleted pod that a Service selects keeps running (and its network) until the
    sidecars were given (and had time to read) config without its endpoint, even when the
    push throttle holds that push back (a push just happened): a client sidecar never
    sends to a pod that is gone or stopping (runtime.SIDECAR_READ). Before, the pod
    stopped at once and its network went ~0.3 s after the deletion, the push up to a
    second later: in the demo's rollout, 3 s of SYNs lost to ARP."""
    from remora.node.runtime import SIDECAR_READ

    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "w1"}, "ports": [{"port": 80}]}}
    with TempNode(pod_setup=f"{__name__}:PushLogSetup") as node:
        node.client.apply([pod("w1", ["sleep", "300"]), pod("keep", ["sleep", "300"]), svc])
        node.client.wait_ready(timeout=10)
        w1 = get_pod(node, "w1")
        assert w1 is not None
        ip, netns_path = w1["status"]["podIP"], Path("/run/netns") / w1["remora"]["netns"]
        pid = w1["status"]["containerStatuses"][0]["remora"]["pid"]
        log = next((node.state_dir / "pods").glob("default_keep_*")) / "pushes.log"

        def pushes() -> list[dict[str, Any]]:
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        def running() -> bool:
            stat = Path(f"/proc/{pid}/stat")
            try:
                return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except (OSError, IndexError):
                return False
        wait_for(lambda: any(p["eps"].get("default/web") == [ip] for p in pushes()))
        # a change that pushes at once, so that the deletion's push comes within the
        # throttle's second and is held back
        node.client.apply([{**svc, "metadata": {"name": "other"}}])
        wait_for(lambda: any("default/other" in p["eps"] for p in pushes()))
        node.client.delete("Pod", "w1")
        stopped = wait_for(lambda: None if running() else time.monotonic(), timeout=10)
        gone = wait_for(lambda: None if netns_path.exists() else time.monotonic(),
                        timeout=10)
        dropped = [p["t"] for p in pushes() if p["eps"].get("default/web") == []]
        assert dropped, pushes()
        assert dropped[0] + SIDECAR_READ - 0.05 <= stopped <= gone, (dropped[0], stopped, gone)
    assert not node.leftovers()


def test_deployment_rollout_replaces_pod_with_new_name() -> None:
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "web", "namespace": "demo"},
              "spec": {"selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{"name": "c", "image": "x",
                                                             "command": ["sleep", "300"]}]}}}}
    with TempNode() as node:
        node.client.apply([deploy])
        old = node.client.wait_ready("demo", timeout=10)[0]["metadata"]["name"]
        assert old.startswith("web-")
        deploy["spec"]["template"]["metadata"]["annotations"] = {
            "sidecar.istio.io/interceptionMode": "TPROXY"}
        assert node.client.apply([deploy]) == ["deployment/web configured"]

        def rolled() -> bool:
            pods = node.client.get("Pod", "demo")
            d = node.client.get("Deployment", "demo")[0]["status"]
            return (len(pods) == 1 and pods[0]["metadata"]["name"] != old
                    and pods[0]["status"]["ready"] and d["updatedReplicas"] == 1)

        wait_for(rolled)
        new = node.client.get("Pod", "demo")[0]
        assert new["metadata"]["annotations"] == {"sidecar.istio.io/interceptionMode": "TPROXY"}
        assert new["metadata"]["labels"]["pod-template-hash"] in new["metadata"]["name"]
    assert not node.leftovers()


def test_down_leaves_nothing_behind() -> None:
    node = TempNode(nodes=2)
    try:
        node.start()
        node.client.apply([pod("a", ["sleep", "300"]), pod("b", ["sleep", "300"], nodeName="2")])
        pods = node.client.wait_ready(timeout=10)
        pids = [p["status"]["containerStatuses"][0]["remora"]["pid"] for p in pods]
        netns_names = {p["remora"]["netns"] for p in pods}
        daemon = node.daemon_pid()
        assert node.leftovers()  # there is something to remove
        node.client.down()
        wait_for(lambda: not Path(f"/proc/{daemon}").exists()
                 or "Z" in Path(f"/proc/{daemon}/stat").read_text())
        assert node.leftovers() == []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert node.prefix not in listed
        assert not any(n in listed for n in netns_names)
        assert not any(Path(f"/etc/netns/{n}").exists() for n in netns_names)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
        assert not node.state_dir.exists()
        assert naming.is_ours(node.prefix, f"{node.prefix}node-1")
    finally:
        node.close()


def test_a_second_lab_with_the_same_prefix_is_refused() -> None:
    with TempNode() as node:
        other = TempNode(prefix=node.prefix)
        try:
            with pytest.raises(RemoraError, match="another lab uses the prefix"):
                other.start()
        finally:
            other.close()
        # the first lab is untouched, even by the second one's clean-up
        assert node.client.alive()
        assert f"netns {node.prefix}node-1" in node.leftovers()


def test_a_known_lab_restarting_into_another_labs_prefix_is_refused() -> None:
    # lab B exists (its store knows the prefix) but its namespaces are gone, as after a
    # reboot; lab A, in another state dir, then takes the same prefix. B must not start
    # on A's namespaces, and B's clean-up must leave them alone.
    b = TempNode()
    try:
        b.start()
        os.kill(b.daemon_pid(), signal.SIGTERM)
        wait_for(lambda: not b.client.alive())
        for name in netlink.names():
            if name.startswith(b.prefix):
                netlink.delete(name)
        with TempNode(prefix=b.prefix) as a:
            with pytest.raises(RemoraError) as refused:
                b.start()
            line = refused.value.one_line()
            assert f"another lab uses the prefix {b.prefix!r}" in line
            assert str(a.state_dir) in line and "--prefix" in line
            b.close()
            assert a.client.alive()
            assert f"netns {a.prefix}node-1" in a.leftovers()
            assert f"netns {a.prefix}fabric" in a.leftovers()
            a.client.apply([pod("still", ["sleep", "300"])])
            a.client.wait_ready(timeout=10)
        assert not a.leftovers()
    finally:
        b.close()


def test_pod_deleted_while_the_daemon_was_down_is_still_stopped() -> None:
    with TempNode() as node:
        # ignores SIGTERM, so stopping it takes the grace period (1 s in TempNode)
        node.client.apply([pod("stubborn", ["sh", "-c", "trap '' TERM; sleep 300"])])
        p = node.client.wait_ready(timeout=10)[0]
        pid = p["status"]["containerStatuses"][0]["remora"]["pid"]
        node.client.delete("Pod", "stubborn")
        os.kill(node.daemon_pid(), signal.SIGKILL)
        wait_for(lambda: not node.client.alive())
        assert Path(f"/proc/{pid}").exists()  # still there: the SIGKILL never came
        node.start()
        wait_for(lambda: get_pod(node, "stubborn") is None)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
        assert not Path(f"/run/netns/{p['remora']['netns']}").exists()
    assert not node.leftovers()


def test_cli_status_and_down() -> None:
    with TempNode() as node:
        node.client.apply([pod("a", ["sleep", "300"])])
        node.client.wait_ready(timeout=10)
        cli = [sys.executable, "-m", "remora", "node"]
        out = subprocess.run([*cli, "status", "--state-dir", str(node.state_dir)],
                             capture_output=True, text=True, check=True).stdout
        assert f"node {node.prefix}node-1  10.20.0.0/24  gateway 10.20.0.1" in out
        assert "pod default/a  1/1  Running  restarts 0  10.20.0.2" in out
        data = json.loads(subprocess.run(
            [*cli, "status", "--state-dir", str(node.state_dir), "-o", "json"],
            capture_output=True, text=True, check=True).stdout)
        assert [p["metadata"]["name"] for p in data["pods"]] == ["a"]
        down = subprocess.run([*cli, "down", "--state-dir", str(node.state_dir)],
                              capture_output=True, text=True, check=True)
        assert down.stdout.startswith("removed ")
        assert node.leftovers() == []
        gone = subprocess.run([*cli, "status", "--state-dir", str(node.state_dir)],
                              capture_output=True, text=True)
        assert gone.returncode == 1
        assert gone.stderr.startswith("remora: error: no node daemon at ")
        assert "(fix: start the lab with `remora up`)" in gone.stderr
