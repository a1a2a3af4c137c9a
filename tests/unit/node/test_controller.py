from __future__ import annotations

from typing import Any

from remora.node import controller
from remora.node.controller import OwnedPod

DEPLOY: dict[str, Any] = {
    "kind": "Deployment", "metadata": {"name": "simple-server", "namespace": "demo-to"},
    "spec": {"selector": {"matchLabels": {"web": "server"}},
             "template": {"metadata": {"labels": {"web": "server"}},
                          "spec": {"containers": [{"name": "demo",
                                                   "image": "vasth/simple-server"}]}}}}


def owned(name: str, thash: str, ready: bool = True, created: float = 0,
          deleting: bool = False) -> OwnedPod:
    return OwnedPod(name, thash, ready, deleting, created)


def test_new_deployment_creates_its_replicas() -> None:
    assert controller.plan_deployment(DEPLOY, []) == controller.Plan(1, ())
    three = {**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": 3}}
    assert controller.plan_deployment(three, [owned("a", controller.template_hash(three))]) \
        == controller.Plan(2, ())


def test_rollout_keeps_old_pod_until_new_one_is_ready() -> None:
    current = controller.template_hash(DEPLOY)
    assert controller.plan_deployment(DEPLOY, [owned("old", "h0")]) == controller.Plan(1, ())
    waiting = [owned("old", "h0"), owned("new", current, ready=False, created=1)]
    assert controller.plan_deployment(DEPLOY, waiting) == controller.Plan(0, ())
    done = [owned("old", "h0"), owned("new", current, ready=True, created=1)]
    assert controller.plan_deployment(DEPLOY, done) == controller.Plan(0, ("old",))


def test_scale_down_prefers_unready_then_newest() -> None:
    current = controller.template_hash(DEPLOY)
    pods = [owned("a", current, True, 1), owned("b", current, True, 2),
            owned("c", current, False, 0)]
    assert controller.plan_deployment(DEPLOY, pods).delete == ("c", "b")


def test_terminating_pods_do_not_count() -> None:
    current = controller.template_hash(DEPLOY)
    plan = controller.plan_deployment(DEPLOY, [owned("a", current, deleting=True)])
    assert plan == controller.Plan(1, ())


def test_pod_from_template_is_named_and_labelled_like_a_replicaset() -> None:
    pod = controller.pod_from_template(DEPLOY, "seed")
    thash = controller.template_hash(DEPLOY)
    name = pod["metadata"]["name"]
    assert name.startswith(f"simple-server-{thash}-") and len(name.split("-")[-1]) == 5
    assert pod["metadata"]["labels"] == {"web": "server", "pod-template-hash": thash}
    assert pod["metadata"]["namespace"] == "demo-to"
    assert pod["spec"] == DEPLOY["spec"]["template"]["spec"]
    assert pod["spec"] is not DEPLOY["spec"]["template"]["spec"]


def test_template_change_changes_hash_and_replica_count_does_not() -> None:
    patched = {**DEPLOY, "spec": {**DEPLOY["spec"], "template": {
        **DEPLOY["spec"]["template"], "metadata": {
            "labels": {"web": "server"},
            "annotations": {"sidecar.istio.io/interceptionMode": "TPROXY"}}}}}
    assert controller.template_hash(patched) != controller.template_hash(DEPLOY)
    scaled = {**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": 5}}
    assert controller.template_hash(scaled) == controller.template_hash(DEPLOY)


def test_selectors() -> None:
    assert controller.selector_matches({"web": "server"}, {"web": "server", "x": "y"})
    assert not controller.selector_matches({"web": "server"}, {"web": "client"})
    assert not controller.selector_matches({}, {"web": "server"})  # no selector, no pods
    assert controller.selector_matches({"matchLabels": {"a": "1"}, "matchExpressions": [
        {"key": "b", "operator": "In", "values": ["2", "3"]}]}, {"a": "1", "b": "3"})
    assert not controller.selector_matches({"matchExpressions": [
        {"key": "b", "operator": "DoesNotExist"}]}, {"b": "1"})


def pod(name: str, ip: str, labels: dict[str, str], ready: bool = True,
        ns: str = "demo-to") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http",
                                                              "containerPort": 18080}]}]},
            "status": {"podIP": ip, "ready": ready}}


def test_endpoints_are_ready_matching_pods_with_resolved_target_ports() -> None:
    svc = {"metadata": {"name": "s", "namespace": "demo-to"},
           "spec": {"selector": {"web": "server"},
                    "ports": [{"port": 80, "targetPort": "http", "name": "web"},
                              {"port": 81}]}}
    pods = [pod("a", "10.20.0.77", {"web": "server"}),
            pod("b", "10.20.0.78", {"web": "server"}, ready=False),
            pod("c", "10.20.0.79", {"web": "client"}),
            pod("d", "10.20.0.80", {"web": "server"}, ns="other")]
    eps = controller.endpoints(svc, pods)
    assert [(e["ip"], e["port"], e["servicePort"], e["name"]) for e in eps] == [
        ("10.20.0.77", 18080, 80, "web"), ("10.20.0.77", 81, 81, "")]


def row(name: str, state: str = "Running", ready: int = 1, restarts: int = 0, init: int = 0,
        reason: str = "", exit_code: int | None = None) -> dict[str, Any]:
    return {"name": name, "state": state, "ready": ready, "restarts": restarts, "init": init,
            "reason": reason, "exit_code": exit_code}


def test_pod_status_reads_like_kubectl() -> None:
    s = controller.pod_status([row("demo"), row("istio-proxy", restarts=2)], False, "Running")
    assert (s["ready"], s["status"], s["restarts"], s["allReady"]) == ("2/2", "Running", 2, True)
    s = controller.pod_status([row("demo", "Waiting", 0, 3, reason="CrashLoopBackOff")], False,
                              "Running")
    assert (s["ready"], s["status"]) == ("0/1", "CrashLoopBackOff")
    s = controller.pod_status([row("istio-init", "Running", 0, init=1), row("demo", "Waiting", 0,
                               reason="ContainerCreating")], False, "Init")
    assert s["status"] == "Init:0/1"
    s = controller.pod_status([row("demo")], True, "Running")
    assert s["status"] == "Terminating"


def test_pod_status_through_init_counts_the_spec_containers() -> None:
    # two app containers (demo + istio-proxy) and one init container (istio-init), as an
    # injected pod has; kubectl shows READY 0/2 from the start, not 0/0
    def status(rows: list[dict[str, Any]], phase: str) -> tuple[str, str]:
        s = controller.pod_status(rows, False, phase, app_count=2, init_count=1)
        return s["ready"], s["status"]

    assert status([], "Pending") == ("0/2", "Init:0/1")
    assert status([row("istio-init", "Running", 0, init=1)], "Init") == ("0/2", "Init:0/1")
    done = row("istio-init", "Terminated", 0, init=1, reason="Completed", exit_code=0)
    assert status([done], "Init") == ("0/2", "PodInitializing")
    assert status([done, row("demo")], "Running") == ("1/2", "PodInitializing")
    assert status([done, row("demo"), row("istio-proxy", ready=0)], "Running") == (
        "1/2", "Running")
    assert status([done, row("demo", "Waiting", 0, 1, reason="CrashLoopBackOff"),
                   row("istio-proxy")], "Running") == ("1/2", "CrashLoopBackOff")
    failed = row("istio-init", "Waiting", 0, init=1, reason="CrashLoopBackOff", exit_code=1)
    assert status([failed], "Init") == ("0/2", "Init:CrashLoopBackOff")
    # without init containers, a pod whose containers are not started is ContainerCreating
    s = controller.pod_status([], False, "Pending", app_count=1, init_count=0)
    assert (s["ready"], s["status"], s["allReady"]) == ("0/1", "ContainerCreating", False)


def with_strategy(replicas: int, **rolling: int | str) -> dict[str, Any]:
    return {**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": replicas,
                               "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling}}}


def test_rollout_surges_by_max_surge_only() -> None:
    # the lab's default maxSurge 1 / maxUnavailable 0: one new pod at a time, on 4 replicas
    four = with_strategy(4)
    old = [owned(f"o{i}", "h0", created=i) for i in range(4)]
    assert controller.plan_deployment(four, old) == controller.Plan(1, ())
    # maxSurge 50% of 4 = 2 new pods at once; an old one goes as each new one is Ready
    half = with_strategy(4, maxSurge="50%")
    assert controller.plan_deployment(half, old) == controller.Plan(2, ())
    current = controller.template_hash(half)
    one_ready = [*old, owned("n1", current, True, 10), owned("n2", current, False, 11)]
    assert controller.plan_deployment(half, one_ready) == controller.Plan(0, ("o0",))
    # a surge percentage rounds up (25% of 3 is 1), as ResolveFenceposts
    assert controller.fenceposts(with_strategy(3, maxSurge="25%")) == (1, 0)


def test_recreate_removes_every_old_pod_before_the_first_new_one() -> None:
    recreate = {**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": 2,
                                   "strategy": {"type": "Recreate"}}}
    current = controller.template_hash(recreate)
    old = [owned("o0", "h0", True, 0), owned("o1", "h0", True, 1)]
    # every old pod goes at once, Ready or not, and nothing new starts yet
    assert controller.plan_deployment(recreate, old) == controller.Plan(0, ("o0", "o1"))
    # while an old pod is still terminating, still nothing new (oldPodsRunning)
    going = [owned("o0", "h0", True, 0, deleting=True)]
    assert controller.plan_deployment(recreate, going) == controller.Plan(0, ())
    # once they are gone, the new pods, all at once
    assert controller.plan_deployment(recreate, []) == controller.Plan(2, ())
    started = [owned("n0", current, False, 5)]
    assert controller.plan_deployment(recreate, started) == controller.Plan(1, ())


def test_max_unavailable_lets_ready_old_pods_go_before_new_ones_are_ready() -> None:
    # maxUnavailable 2, maxSurge 0: two old pods go at once, and their replacements come
    two_down = with_strategy(4, maxSurge=0, maxUnavailable=2)
    old = [owned(f"o{i}", "h0", created=i) for i in range(4)]
    assert controller.plan_deployment(two_down, old) == controller.Plan(0, ("o0", "o1"))
    current = controller.template_hash(two_down)
    gone = [owned("o0", "h0", created=0, deleting=True), *old[1:]]
    assert controller.plan_deployment(two_down, gone) == controller.Plan(1, ("o1",))
    # an unavailable percentage rounds down (25% of 3 is 0); both 0 means 1 unavailable
    assert controller.fenceposts(with_strategy(3, maxSurge=0, maxUnavailable="25%")) == (0, 1)
    # old pods that are not Ready go first, within maxUnavailable
    sick = [owned("o0", "h0", True, 0), owned("o1", "h0", False, 1),
            owned("n", current, True, 5)]
    assert controller.plan_deployment(with_strategy(2), sick).delete == ("o1",)
