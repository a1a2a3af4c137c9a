"""kubectl's tables: AGE as HumanDuration, the seed's column layout, -o json/yaml."""

from __future__ import annotations

import json

import pytest
import yaml

from remora.errors import UsageError
from remora.lab import tables


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (452, "7m32s"),
    (600, "10m"), (10740, "179m"), (16620, "4h37m"), (20640, "5h44m"), (8 * 3600, "8h"),
    (50 * 3600, "2d2h"), (10 * 86400, "10d"), (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration_is_kubectls(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def pod(name: str, ip: str, ready: int, created: float) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "demo-from"},
            "spec": {"nodeName": "cn-xxx.192.168.0.127",
                     "containers": [{"name": "demo"}, {"name": "istio-proxy"}]},
            "status": {"podIP": ip, "containerStatuses": [{"ready": True}] * ready},
            "remora": {"status": "Running", "restarts": 0, "created": created}}


def test_pod_wide_table_matches_the_seeds_layout() -> None:
    now = 1000.0
    text = tables.table("Pod", [pod("simple-client-54f4f5cccb-mzjkw", "10.20.0.78", 2,
                                    now - 452)], now, wide=True)
    assert text == (
        "NAME                             READY   STATUS    RESTARTS   AGE     IP           NODE\n"
        "simple-client-54f4f5cccb-mzjkw   2/2     Running   0          7m32s   10.20.0.78   "
        "cn-xxx.192.168.0.127\n")


def test_ready_counts_spec_containers_while_init_runs() -> None:
    assert tables.ready_column(pod("p", "", 0, 0)) == "0/2"


def test_service_table_and_all_namespaces() -> None:
    svc = {"metadata": {"name": "simple-server-svc", "namespace": "demo-to",
                        "creationTimestamp": 0},
           "spec": {"type": "ClusterIP", "clusterIP": "172.16.234.188",
                    "ports": [{"port": 18080, "protocol": "TCP"}]}}
    text = tables.table("Service", [svc], 20640, all_namespaces=True)
    assert text.splitlines() == [
        "NAMESPACE   NAME                TYPE        CLUSTER-IP       EXTERNAL-IP   PORT(S)"
        "     AGE",
        "demo-to     simple-server-svc   ClusterIP   172.16.234.188   <none>        18080/TCP"
        "   5h44m"]


def test_kinds_and_unknown_kind() -> None:
    assert [tables.kind_of(k) for k in ("po", "svc", "deploy", "ns", "deployments.apps")] == [
        "Pod", "Service", "Deployment", "Namespace", "Deployment"]
    with pytest.raises(UsageError, match="unknown resource type 'widgets'"):
        tables.kind_of("widgets")


def test_structured_output_drops_the_node_block() -> None:
    p = pod("a", "10.20.0.2", 2, 0)
    single = json.loads(tables.structured([p], "json", single=True))
    assert "remora" not in single and single["metadata"]["name"] == "a"
    listed = yaml.safe_load(tables.structured([p, p], "yaml", single=False))
    assert listed["kind"] == "List" and len(listed["items"]) == 2


def test_several_kinds_prefix_names_as_kubectl() -> None:
    text = tables.table("Pod", [pod("a", "10.20.0.2", 2, 0)], 10, kind_prefix=True)
    assert text.splitlines()[1].startswith("pod/a   2/2")


def test_output_name_and_show_labels_read_like_kubectl() -> None:
    pod = {"metadata": {"name": "web-1", "namespace": "demo-to",
                        "labels": {"web": "server", "app": "x"}},
           "spec": {"containers": [{"name": "demo"}]},
           "status": {"containerStatuses": []}, "remora": {"status": "Running"}}
    deploy = {"metadata": {"name": "web", "namespace": "demo-to"}, "spec": {}, "status": {}}
    assert tables.names("Pod", [pod]) == "pod/web-1\n"
    assert tables.names("Deployment", [deploy]) == "deployment.apps/web\n"
    assert tables.names("AuthorizationPolicy", [deploy]) == \
        "authorizationpolicy.security.istio.io/web\n"
    lines = tables.table("Pod", [pod], now=0.0, show_labels=True).splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]
    assert lines[1].endswith("   app=x,web=server")
    assert tables.table("Deployment", [deploy], 0.0, show_labels=True).splitlines()[1] \
        .endswith("   <none>")


def test_structured_output_prints_rfc3339_timestamps() -> None:
    from remora.lab.tables import structured
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "x", "creationTimestamp": 1796479324.1457555},
          "remora": {"created": 1}}
    out = structured([ns], "yaml", single=True)
    assert "creationTimestamp: '2026-12-05T14:02:04Z'" in out and "remora" not in out
    assert ns["metadata"]["creationTimestamp"] == 1796479324.1457555  # not changed in place
