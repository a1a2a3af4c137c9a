"""`explain --kube`'s collection, without a cluster: how an API's or an exec's failure is
classified, which namespaces it falls back to, how pods are read as the API serves them,
and how a step that cannot be collected becomes a named gap with what to run instead.

The failure texts are what the clients really get: the exec WebSocket's handshake refusal
as the `kubernetes` client words it, containerd's OCI error for a binary the image lacks,
iptables' refusal without root, and the exec's final Status objects
(k8s.io/apimachinery's remotecommand). The end-to-end path against the lab's API is
tests/netns/test_explain_kube.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from remora.diagnose.evidence import kube
from remora.diagnose.evidence.kube_client import ExecResult, _exit_code, classify
from remora.diagnose.evidence.target import find_pod
from remora.errors import RemoraError

OCI_NOT_FOUND = ('OCI runtime exec failed: exec failed: unable to start container process: '
                 'exec: "iptables-save": executable file not found in $PATH: unknown')
NOT_ROOT = "iptables-save v1.8.10 (nf_tables): Could not fetch rule set generation id: " \
           "Permission denied (you must be root)"
HANDSHAKE_403 = "Handshake status 403 Forbidden -+-+- {'audit-id': 'x'} -+-+- b'{\"kind\":" \
                "\"Status\",\"reason\":\"Forbidden\"}'"


def test_classify_real_failure_texts() -> None:
    assert classify(0, HANDSHAKE_403) == "forbidden by RBAC (403)"
    assert classify(403, "Forbidden") == "forbidden by RBAC (403)"
    assert classify(401, "Unauthorized").startswith("unauthorized")
    assert classify(None, OCI_NOT_FOUND, None).startswith("not in the container's image")
    assert classify(None, "exec of \"pilot-agent\" failed: No such file or directory", 255) \
        .startswith("not in the container's image")  # the lab's `ip netns exec`
    assert classify(None, NOT_ROOT, 4).startswith("not permitted in the container")
    assert classify(None, "", 0) == ""


def test_exec_status_channel() -> None:
    assert _exit_code(json.dumps({"metadata": {}, "status": "Success"})) == (0, "")
    failure = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
               "message": "command terminated with non-zero exit code: exit status 4",
               "details": {"causes": [{"reason": "ExitCode", "message": "4"}]}}
    assert _exit_code(json.dumps(failure))[0] == 4
    # the command never started: no exit code, only the runtime's message
    started = {"metadata": {}, "status": "Failure", "message": OCI_NOT_FOUND,
               "reason": "InternalError"}
    assert _exit_code(json.dumps(started)) == (None, OCI_NOT_FOUND)
    assert _exit_code("") == (None, "")


def _pod(name: str, ns: str, ip: str, owner: dict[str, str], ready: bool = True,
         labels: dict[str, str] | None = None, sidecar: bool = True) -> dict[str, Any]:
    containers = [{"name": "demo", "ports": [{"containerPort": 18080}]}]
    if sidecar:
        containers.append({"name": "istio-proxy", "securityContext": {
            "runAsUser": 1337, "runAsGroup": 1337}})
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {},
                         "ownerReferences": [owner]},
            "spec": {"containers": containers},
            "status": {"podIP": ip, "phase": "Running", "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready",
                                       "status": "True" if ready else "False"}]}}


CLIENT = _pod("simple-client-5d9f-abcde", "demo-from", "10.0.0.8",
              {"kind": "ReplicaSet", "name": "simple-client-5d9f"},
              labels={"web": "client", "pod-template-hash": "5d9f"})
SERVER = _pod("simple-server-7c8b-fghij", "demo-to", "10.0.0.7",
              {"kind": "ReplicaSet", "name": "simple-server-7c8b"},
              labels={"web": "server", "pod-template-hash": "7c8b"})
SERVICE = {"metadata": {"name": "simple-server-svc", "namespace": "demo-to"},
           "spec": {"clusterIP": "172.16.0.10", "selector": {"web": "server"},
                    "ports": [{"port": 18080}]}}


def test_pods_as_the_api_serves_them() -> None:
    pods = [kube.as_candidate(p) for p in (CLIENT, SERVER)]
    assert [p["status"]["ready"] for p in pods] == [True, True]
    assert kube.as_candidate(_pod("x", "n", "1.1.1.1", {}, ready=False))["status"]["ready"] \
        is False
    # deploy/NAME through the ReplicaSet NAME-<pod-template-hash>, no netns needed
    got = find_pod(pods, "deploy/simple-client", "demo-from", netns=False)
    assert (got.name, got.ip, got.has_sidecar) == (CLIENT["metadata"]["name"], "10.0.0.8", True)
    with pytest.raises(RemoraError, match="not running yet"):
        find_pod(pods, "deploy/simple-client", "demo-from")  # the lab's form needs a netns
    assert kube._namespaces("demo-from", "simple-server-svc.demo-to:18080") == [
        "demo-from", "demo-to"]
    assert kube._namespaces("demo-from", "172.16.0.10:18080") == ["demo-from"]


@dataclass
class Cluster:
    """An API that answers with fixed objects and a fixed answer per command: the
    failures a real cluster gives (RBAC, distroless, no root)."""

    answers: dict[str, ExecResult]
    forbid_all_namespaces: bool = False
    log_refusal: str = ""
    calls: list[str] = field(default_factory=list)

    def pods(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
        if namespaces is None and self.forbid_all_namespaces:
            raise RemoraError("cannot list pods through the Kubernetes API at x: forbidden "
                              "by RBAC (403)")
        return [p for p in (CLIENT, SERVER)
                if namespaces is None or p["metadata"]["namespace"] in namespaces]

    def services(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
        return [SERVICE]

    def logs(self, namespace: str, pod: str, container: str, tail: int) -> tuple[str, str]:
        return "", self.log_refusal

    def exec(self, namespace: str, pod: str, container: str, argv: list[str],
             timeout: float = 20.0) -> ExecResult:
        self.calls.append(" ".join(argv[:2]))
        answer = self.answers.get(argv[0], ExecResult((), None, "", OCI_NOT_FOUND,
                                                      classify(None, OCI_NOT_FOUND)))
        return replace(answer, argv=tuple(argv))


def test_distroless_and_rbac_become_gaps_with_what_to_run() -> None:
    refused = ExecResult(("iptables-save",), 4, "", NOT_ROOT, classify(None, NOT_ROOT, 4))
    iptables = ExecResult(("iptables",), 4, "", NOT_ROOT, classify(None, NOT_ROOT, 4))
    cluster = Cluster({"iptables-save": refused, "iptables": iptables},
                      forbid_all_namespaces=True, log_refusal="forbidden by RBAC (403)")
    run = kube.collect(cluster, "deploy/simple-client", "demo-from",
                       "simple-server-svc.demo-to:18080")
    assert run.server.name == SERVER["metadata"]["name"]
    assert "read them in demo-from, demo-to only" in run.notes[0]
    gaps = {g.step: g for g in run.gaps}
    assert set(gaps) == {"client capture rules", "server capture rules",
                         "client sidecar config dump", "server sidecar config dump",
                         "client access log", "server access log",
                         "server policy routing (TPROXY)"}
    assert "not permitted in the container" in gaps["server capture rules"].why
    assert "nsenter" in gaps["server capture rules"].instead
    why = gaps["server sidecar config dump"].why
    assert "`pilot-agent request GET`: not in the container's image" in why
    assert "`curl -s --max-time`" in why and "`wget -q -O`" in why
    assert gaps["server sidecar config dump"].instead.startswith("istioctl proxy-config all")
    assert gaps["server access log"].why == "forbidden by RBAC (403)"
    assert "kubectl logs simple-server-7c8b-fghij -n demo-to -c istio-proxy" in \
        gaps["server access log"].instead
    # the uid/gid still come from the pod spec, and the analysis runs on what there is
    assert (run.evidence.server.proxy_uid, run.evidence.server.proxy_gid) == (1337, 1337)
    assert run.evidence.target.port == 18080 and run.evidence.target.host == "172.16.0.10"
    header = "\n".join(kube.header_lines(run))
    assert "could not collect server capture rules: `iptables-save`: not permitted" in header


def test_an_exec_refused_by_rbac_is_not_retried() -> None:
    denied = ExecResult(("pilot-agent",), None, "", HANDSHAKE_403, classify(0, HANDSHAKE_403))
    cluster = Cluster({"pilot-agent": denied})
    pod = find_pod([kube.as_candidate(SERVER)], SERVER["metadata"]["name"], "demo-to",
                   netns=False)
    ok, failed = kube.fetch_config_dump(cluster, pod)
    assert ok is None and cluster.calls == ["pilot-agent request"]
    assert [f.refusal for f in failed] == ["forbidden by RBAC (403)"]
    with pytest.raises(RemoraError, match=r"cannot read the config dump of demo-to/"
                       r"simple-server-7c8b-fghij: `pilot-agent request GET`: forbidden"):
        kube.config_dump_text(cluster, pod)


def test_an_ipv6_pod_gives_its_ip6tables_rules_too(data_dir: Path) -> None:
    """A dual-stack server (status.podIPs with an IPv6 address): ip6tables-save is run in
    its istio-proxy as well, and the rules are kept as the IPv6 family's."""
    save6 = (data_dir / "diagnose" / "seed_ipv6_redirect.ip6tables-save").read_text()
    server = json.loads(json.dumps(SERVER))
    server["status"]["podIPs"] = [{"ip": "10.0.0.7"}, {"ip": "fd00:10:20::77"}]
    cluster = Cluster({"ip6tables-save": ExecResult((), 0, save6, "")})
    pod = find_pod([kube.as_candidate(server)], SERVER["metadata"]["name"], "demo-to",
                   netns=False)
    run = kube.KubeRun(kube.Evidence(), pod, pod, None)  # type: ignore[arg-type]
    rules = kube._rules6(cluster, pod, "istio-proxy", run, "server")
    assert rules is not None and rules.family == 6
    assert "ISTIO_OUTPUT" in rules.tables["nat"].chains
    assert run.collected == [f"server IPv6 capture rules: ip6tables-save in {pod.ref} "
                             "-c istio-proxy"]
    # an IPv4-only pod: not asked
    ipv4 = find_pod([kube.as_candidate(SERVER)], SERVER["metadata"]["name"], "demo-to",
                    netns=False)
    assert kube._rules6(cluster, ipv4, "istio-proxy", run, "server") is None
    assert cluster.calls == ["ip6tables-save"]


def test_a_missing_pod_names_kubectl() -> None:
    cluster = Cluster({})
    with pytest.raises(RemoraError) as info:
        kube.collect(cluster, "nope", "demo-from", "simple-server-svc.demo-to:18080")
    assert "client pod 'nope' not found in namespace 'demo-from'" in info.value.problem
    assert info.value.fix == "list them with `kubectl get pods -n demo-from` (or -A)"


def test_native_nftables_when_iptables_holds_no_istio_chain(data_dir: Path) -> None:
    """Istio's native nftables mode: iptables-save shows no ISTIO chain, so `nft list
    ruleset` is read (the real nft's listing of the seed server's tables), both families."""
    ruleset = (data_dir / "diagnose" / "seed_nft_redirect_ruleset.txt").read_text()
    empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    cluster = Cluster({"iptables-save": ExecResult((), 0, empty, ""),
                       "nft": ExecResult((), 0, ruleset, "")})
    run = kube.collect(cluster, "deploy/simple-client", "demo-from",
                       "simple-server-svc.demo-to:18080")
    server = run.evidence.server
    assert server.iptables is not None and server.iptables6 is not None
    assert "ISTIO_IN_REDIRECT" in server.iptables.tables["nat"].chains
    assert any(c.startswith("server capture rules: nft list ruleset in demo-to/")
               for c in run.collected)
    assert "nft list" in cluster.calls


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: lab
  user: {token: t}
contexts:
- name: lab
  context: {cluster: lab, user: lab}
- name: staging
  context: {cluster: lab, user: lab}
current-context: lab
"""


def test_a_kubeconfig_problem_names_the_file_and_the_contexts(tmp_path: Path) -> None:
    # the client library says "Invalid kube-config file. No configuration found" for a
    # missing file and "Expected object with name X in ... contexts list" for a context
    # that is not there; as kubectl, say which file and which contexts it does have
    from remora.diagnose.evidence.kube_client import KubeCluster

    missing = tmp_path / "nope.yaml"
    with pytest.raises(RemoraError) as gone:
        KubeCluster(str(missing), None)
    assert gone.value.problem == f"cannot use the kubeconfig: {missing} does not exist"
    assert "export KUBECONFIG=$(sudo remora kubeconfig)" in (gone.value.fix or "")
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    with pytest.raises(RemoraError) as wrong:
        KubeCluster(str(path), "prod")
    assert wrong.value.one_line() == (
        f"cannot use the kubeconfig {path}: it has no context 'prod' (it has lab, staging) "
        "(fix: pass --context lab, or another that `kubectl config get-contexts` lists)")
    assert KubeCluster(str(path), "staging").server == "https://127.0.0.1:1"
