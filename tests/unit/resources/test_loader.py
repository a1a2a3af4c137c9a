
import pytest

from remora.errors import RemoraError
from remora.resources.loader import load_file, load_manifests
from remora.resources.objects import Deployment, Namespace, Service
from tests.datafiles import data_path

DATA = data_path("resources")


def test_seed_manifests_load_without_warnings() -> None:
    server = load_file(DATA / "server.yaml")
    client = load_file(DATA / "client.yaml")
    assert server.warnings == [] and client.warnings == []
    dep, svc = server.objects
    assert isinstance(dep, Deployment) and isinstance(svc, Service)
    assert (dep.metadata.namespace, dep.metadata.name) == ("demo-to", "simple-server")
    assert dep.replicas == 1
    assert dep.selector == {"web": "server"} and dep.template.labels == {"web": "server"}
    c = dep.template.spec.containers[0]
    assert (c.name, c.image, c.imagePullPolicy) == ("demo", "vasth/simple-server", "Always")
    assert svc.selector == {"web": "server"}
    port = svc.ports[0]
    assert (port.port, port.targetPort, port.protocol) == (18080, 18080, "TCP")
    assert svc.fqdn == "simple-server-svc.demo-to.svc.cluster.local"
    assert client.objects[0].metadata.name == "simple-client"


def test_directory_and_round_trip() -> None:
    loaded = load_file(DATA)
    assert [o.kind for o in loaded.objects] == ["Deployment", "Deployment", "Service"]
    again = load_manifests("\n---\n".join(__import__("yaml").safe_dump(o.to_dict())
                                          for o in loaded.objects))
    assert again.objects == loaded.objects


def test_unknown_kind_and_fields_are_warnings_naming_them() -> None:
    text = """
apiVersion: v1
kind: Namespace
metadata: {name: demo-to, labels: {istio-injection: enabled}, colour: blue}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{port: 80, name: http, frobnicate: 1}]
"""
    loaded = load_manifests(text, "x.yaml")
    ns = loaded.objects[0]
    assert isinstance(ns, Namespace) and ns.metadata.labels == {"istio-injection": "enabled"}
    assert len(loaded.objects) == 2
    assert any("Namespace/demo-to: unknown field metadata.colour" in w for w in loaded.warnings)
    assert any("unknown kind networking.istio.io/v1beta1/VirtualService" in w
               for w in loaded.warnings)
    assert any("Service/default/s: unknown field spec.ports[0].frobnicate" in w
               for w in loaded.warnings)


DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ns1}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: img, ports: [{containerPort: 8080}]}]
"""


@pytest.mark.parametrize(("old", "new", "path", "what"), [
    ("metadata: {name: web, namespace: ns1}", "metadata: {namespace: ns1}",
     "metadata.name", "required"),
    ("containerPort: 8080", "containerPort: 70000", "spec.template.spec.containers[0]"
     ".ports[0].containerPort", "out of range"),
    ("containerPort: 8080", "containerPort: '80'", "containerPort", "expected an integer"),
    ("labels: {app: web}}", "labels: {app: other}}", "spec.template.metadata.labels",
     "selector does not match"),
    ("image: img", "image: 5", "containers[0].image", "expected a string"),
    ("name: web,", "name: Web_1,", "metadata.name", "invalid name"),
])
def test_invalid_objects_name_object_field_and_problem(old: str, new: str, path: str,
                                                       what: str) -> None:
    text = DEPLOY.replace(old, new)
    assert text != DEPLOY
    with pytest.raises(RemoraError) as err:
        load_manifests(text + "\n---\n" + (DATA / "client.yaml").read_text())
    line = err.value.one_line()
    assert "Deployment/ns1/" in line and path in line and what in line


def test_rolling_update_and_recreate_are_kept() -> None:
    spec = "spec:\n  selector: {matchLabels: {app: web}}\n"
    rolling = DEPLOY.replace(spec, spec + "  strategy: {rollingUpdate: {maxSurge: 25%, "
                             "maxUnavailable: 1}}\n")
    loaded = load_manifests(rolling)
    assert loaded.warnings == []
    dep = loaded.objects[0]
    assert isinstance(dep, Deployment)
    assert (dep.max_surge, dep.max_unavailable) == ("25%", 1)
    assert dep.to_dict()["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}
    assert "strategy" not in load_manifests(DEPLOY).objects[0].to_dict()["spec"]
    recreate = load_manifests(DEPLOY.replace(spec, spec + "  strategy: {type: Recreate}\n"))
    dep = recreate.objects[0]
    assert isinstance(dep, Deployment) and dep.strategy == "Recreate"
    assert dep.to_dict()["spec"]["strategy"] == {"type": "Recreate"}
    # as the apiserver's ValidateDeploymentStrategy: no rollingUpdate with Recreate, and
    # no other type
    with pytest.raises(RemoraError) as both:
        load_manifests(DEPLOY.replace(spec, spec + "  strategy: {type: Recreate, "
                                      "rollingUpdate: {maxSurge: 1}}\n"))
    assert "spec.strategy.rollingUpdate" in both.value.one_line()
    with pytest.raises(RemoraError) as other:
        load_manifests(DEPLOY.replace(spec, spec + "  strategy: {type: BlueGreen}\n"))
    assert "spec.strategy.type" in other.value.one_line()


def test_one_bad_object_fails_the_whole_load() -> None:
    bad = DEPLOY.replace("containerPort: 8080", "containerPort: 0")
    with pytest.raises(RemoraError):
        load_manifests((DATA / "server.yaml").read_text() + "\n---\n" + bad)


def test_service_target_port_by_name_and_bad_port() -> None:
    svc = """
apiVersion: v1
kind: Service
metadata: {name: s, namespace: a}
spec:
  selector: {app: x}
  ports: [{name: http-web, port: 80, targetPort: web, appProtocol: http}]
"""
    s = load_manifests(svc).objects[0]
    assert isinstance(s, Service)
    assert s.ports[0].targetPort == "web" and s.ports[0].appProtocol == "http"
    with pytest.raises(RemoraError, match=r"Service/a/s: spec.ports\[0\].port"):
        load_manifests(svc.replace("port: 80,", "port: -1,"))
    with pytest.raises(RemoraError, match=r"spec\.type"):
        load_manifests(svc.replace("selector:", "type: NodePort\n  selector:"))


def test_label_values_must_be_strings() -> None:
    with pytest.raises(RemoraError) as err:
        load_manifests(DEPLOY.replace("labels: {app: web}}", "labels: {app: web, v: 1}}"))
    assert "labels.v: expected a string" in err.value.one_line()
    assert 'fix: quote the value in YAML: v: "1"' in err.value.one_line()


def test_pod_and_list_documents() -> None:
    text = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: a, labels: {app: p}}
  spec:
    containers:
    - name: c
      image: busybox
      command: [sleep, "3600"]
      env: [{name: A, value: "1"}]
      readinessProbe: {tcpSocket: {port: 80}}
  status: {phase: Running}
"""
    loaded = load_manifests(text)
    assert loaded.warnings == []
    (pod,) = loaded.objects
    assert pod.kind == "Pod" and pod.metadata.labels == {"app": "p"}
    c = pod.spec.containers[0]  # type: ignore[union-attr]
    assert c.command == ("sleep", "3600") and c.env[0].value == "1"
    assert c.readinessProbe == {"tcpSocket": {"port": 80}}
    with pytest.raises(RemoraError) as err:
        load_manifests(text.replace('command: [sleep, "3600"]', "command: [sleep, 3600]"))
    assert "Pod/a/p: spec.containers[0].command[1]: expected a string" in err.value.one_line()


DUP_SVC = """
apiVersion: v1
kind: Service
metadata: {name: dup, namespace: shop}
spec:
  selector: {app: x}
  ports: [{port: 80, name: a}, {port: 80, name: b}]
"""


def test_service_with_one_port_twice_is_refused_as_the_api_server_does() -> None:
    # validation.go ValidateService: spec.ports[1]: Duplicate value (port + protocol)
    with pytest.raises(RemoraError) as err:
        load_manifests(DUP_SVC)
    assert "Service/shop/dup: spec.ports[1]: Duplicate value: port 80/TCP" in str(err.value)
    # the same number over another protocol is another port (DNS's TCP and UDP 53)
    ok = load_manifests(DUP_SVC.replace("name: b}", "name: b, protocol: UDP}"))
    assert len(ok.objects) == 1
    with pytest.raises(RemoraError, match=r"spec.ports\[1\].name: Duplicate value: 'a'"):
        load_manifests(DUP_SVC.replace("{port: 80, name: b}", "{port: 81, name: a}"))


def test_a_typo_of_containers_is_named_in_the_error() -> None:
    typo = DEPLOY.replace("containers:", "contianers:")
    assert "contianers:" in typo
    with pytest.raises(RemoraError) as err:
        load_manifests(typo)
    assert ("spec.template.spec.containers: at least one container is required (unknown "
            "field spec.template.spec.contianers: a typo of containers?)") in str(err.value)
    assert err.value.fix == "rename spec.template.spec.contianers to spec.template.spec.containers"


def test_min_ready_seconds_and_paused_are_kept_and_checked() -> None:
    """Kept for the node's controller (no longer "(ignored)"), checked as apps/v1
    ValidateDeploymentSpec: minReadySeconds at least 0 and below progressDeadlineSeconds
    (600 when left out, the apiserver defaults it before it validates)."""
    spec = "spec:\n  selector: {matchLabels: {app: web}}\n"
    loaded = load_manifests(DEPLOY.replace(spec, spec + "  minReadySeconds: 5\n"
                                           "  paused: true\n"))
    assert loaded.warnings == []
    dep = loaded.objects[0]
    assert isinstance(dep, Deployment) and (dep.min_ready, dep.paused) == (5, True)
    assert (dep.to_dict()["spec"]["minReadySeconds"], dep.to_dict()["spec"]["paused"]) == \
        (5, True)
    plain = load_manifests(DEPLOY).objects[0]
    assert isinstance(plain, Deployment)
    assert {"minReadySeconds", "paused"}.isdisjoint(plain.to_dict()["spec"])
    for extra, what in (("  minReadySeconds: -1\n", "minReadySeconds"),
                        ("  minReadySeconds: 600\n", "must be greater than minReadySeconds"),
                        ("  minReadySeconds: 10\n  progressDeadlineSeconds: 10\n",
                         "must be greater than minReadySeconds"),
                        ("  paused: 'yes'\n", "paused")):
        with pytest.raises(RemoraError) as err:
            load_manifests(DEPLOY.replace(spec, spec + extra))
        assert what in err.value.one_line()


def test_bad_yaml_is_one_line_naming_the_lines() -> None:
    # PyYAML's text repeats `in "<unicode string>"` and prints the line with a caret; the
    # message names the lines instead, 1-based (kubectl: "yaml: line 5: did not find
    # expected ',' or ']'"), the same for the image map and kube-inject
    from remora.controlplane.kube_inject import inject_text
    from remora.lab.images import parse

    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: [oops\n"
    where = ("while parsing a flow sequence at line 5, column 11: expected ',' or ']', but "
             "got '<stream end>' at line 6, column 1")
    with pytest.raises(RemoraError) as err:
        load_manifests(text, "bad.yaml")
    assert err.value.one_line() == f"bad.yaml: not valid YAML: {where} (fix: fix the YAML syntax)"
    with pytest.raises(RemoraError) as err:
        inject_text(text, "bad.yaml")
    assert err.value.problem == f"bad.yaml: not YAML: {where}"
    with pytest.raises(RemoraError) as err:
        parse("images: [\n", "m.yaml")
    assert err.value.problem == ("image map m.yaml: not valid YAML (while parsing a flow "
                                 "node at line 2, column 1: expected the node content, but "
                                 "found '<stream end>' at line 2, column 1)")
