"""Manifests: the seed's files ship verbatim; admission problems are found before apply."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from remora.cli.lab import _unknown_fields
from remora.errors import RemoraError
from remora.kubeapi.handlers import Handler
from remora.kubeapi.messages import Request, Response
from remora.lab import manifests
from remora.lab.images import ImageMap
from remora.node.store import Store
from tests.unit.kubeapi.test_handlers import StoreBackend


def seed_block(shared: str, name: str) -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", shared, re.S)
    return next(b for b in blocks if b.startswith(f"# {name}"))


@pytest.mark.parametrize("name", manifests.SEED_FILES)
def test_seed_manifests_are_the_seeds_text(data_dir, name: str) -> None:  # type: ignore[no-untyped-def]
    seed = next((data_dir / "seed").glob("000_*.txt")).read_text()
    assert manifests.seed_text(name) == seed_block(seed, name)


def test_seed_manifests_load_without_warnings() -> None:
    batch = manifests.from_text(manifests.seed_text("server.yaml") + "---\n"
                                + manifests.seed_text("client.yaml"), "seed")
    assert [(o["kind"], o["metadata"]["name"]) for o in batch.objects] == [
        ("Deployment", "simple-server"), ("Service", "simple-server-svc"),
        ("Deployment", "simple-client")]
    assert batch.warnings == []
    assert manifests.names_namespaces(batch.objects) == ["demo-from", "demo-to"]


def injected_namespaces() -> dict[str, dict[str, object]]:
    return {"demo-to": manifests.namespace("demo-to", {"istio-injection": "enabled"})}


def test_admission_check_accepts_the_seed() -> None:
    batch = manifests.from_text(manifests.seed_text("server.yaml"), "server.yaml")
    manifests.admission_check(batch.objects, injected_namespaces(), ImageMap())


def test_admission_check_names_a_bad_interception_mode() -> None:
    text = manifests.seed_text("server.yaml").replace(
        "      labels:\n        web: server",
        "      labels:\n        web: server\n      annotations:\n"
        "        sidecar.istio.io/interceptionMode: tproxy", 1)
    batch = manifests.from_text(text, "server.yaml")
    with pytest.raises(RemoraError) as err:
        manifests.admission_check(batch.objects, injected_namespaces(), ImageMap())
    # the field as written, not the made-up name of the sample pod the template was
    # checked as (it was "...: Pod/demo-to/simple-server-b4bf74688-z7zql: annotation ...")
    assert err.value.one_line() == (
        "Deployment/demo-to/simple-server: spec.template: annotation "
        "sidecar.istio.io/interceptionMode: invalid value 'tproxy' "
        "(fix: use REDIRECT or TPROXY)")


def test_admission_check_names_an_unmapped_image() -> None:
    text = manifests.seed_text("client.yaml").replace("vasth/simple-client", "acme/thing")
    batch = manifests.from_text(text, "client.yaml")
    with pytest.raises(RemoraError, match="Deployment/demo-from/simple-client: container "
                                          "'demo' has no command and image 'acme/thing'"):
        manifests.admission_check(batch.objects, {}, ImageMap())


def test_bare_pods_are_expected_by_wait() -> None:
    objs = [{"kind": "Pod", "metadata": {"name": "a"}},
            {"kind": "Service", "metadata": {"name": "s", "namespace": "x"}}]
    assert manifests.bare_pods(objs) == [("default", "a")]


def test_reading_nothing_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(RemoraError, match="no objects found"):
        manifests.read([str(tmp_path / "empty.yaml")])


def test_a_lone_unknown_kind_is_named_and_the_hint_lists_every_kind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vs = tmp_path / "vs.yaml"
    vs.write_text("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
                  "metadata: {name: vs, namespace: demo-to}\n")
    with pytest.raises(RemoraError) as err:
        manifests.read([str(vs)])
    line = err.value.one_line()
    assert f"no objects found in {vs}: unknown kind networking.istio.io/v1beta1/VirtualService" \
        in line
    for kind in ("Namespace", "Deployment", "Service", "Pod", "PeerAuthentication",
                 "AuthorizationPolicy"):
        assert kind in (err.value.fix or "")


SEED_BATCH = manifests.seed_text("server.yaml") + "---\n" + manifests.seed_text("client.yaml")


def test_objects_in_a_missing_namespace_are_refused_with_the_fix() -> None:
    batch = manifests.from_text(SEED_BATCH, "seed")
    with pytest.raises(RemoraError) as err:
        manifests.check_namespaces(batch.objects, existing={"demo-from"})
    assert err.value.problem == ('namespaces "demo-to" not found (needed by '
                                 "deployment/simple-server, service/simple-server-svc; "
                                 "nothing was applied)")
    assert "`remora create ns demo-to`" in (err.value.fix or "")
    assert "`remora label ns demo-to istio-injection=enabled`" in (err.value.fix or "")
    assert "Namespace manifest" in (err.value.fix or "")
    with pytest.raises(RemoraError, match='namespaces "demo-from", "demo-to" not found'):
        manifests.check_namespaces(batch.objects, existing=set())


def test_namespaces_that_exist_or_come_with_the_batch_are_accepted() -> None:
    batch = manifests.from_text(SEED_BATCH, "seed")
    manifests.check_namespaces(batch.objects, existing={"demo-from", "demo-to"})
    with_ns = [manifests.namespace("demo-to"), manifests.namespace("demo-from"),
               *batch.objects]
    manifests.check_namespaces(with_ns, existing=set())
    # the API server's own namespaces always exist; a Pod without one goes to default
    manifests.check_namespaces([{"kind": "Pod", "metadata": {"name": "p"}},
                                {"kind": "Service", "metadata": {"name": "s",
                                                                 "namespace": "kube-system"}}],
                               existing=set())


TYPO_FILE = """\
apiVersion: v1
kind: Namespace
metadata: {name: v4}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: v4}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: vasth/simple-server, imagePullPolicyy: Always}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: v4}
spec: {selector: {app: web}, ports: [{port: 80}]}
"""
TYPO_PATH = "spec.template.spec.containers[0].imagePullPolicyy"


def test_validate_strict_refuses_the_object_as_the_kube_api(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """kubectl apply (--validate=strict, its default) has the apiserver refuse an object
    with a field Kubernetes' schema lacks; read() leaves it out and says why (the CLI then
    refuses the whole batch); the words are the lab's Kubernetes API's (judged here by its
    handler; by kubectl in tests/netns/test_lab_cli.py). Before, `remora apply` warned and
    applied it."""
    path = tmp_path / "x.yaml"
    path.write_text(TYPO_FILE)
    batch = manifests.read([str(path)], manifests.STRICT, _unknown_fields)
    assert [(o["kind"], o["metadata"]["name"]) for o in batch.objects] == [
        ("Namespace", "v4"), ("Service", "web")]
    (refused,) = batch.refused
    api = Handler(StoreBackend(Store(tmp_path / "remora.db")), "t")
    deployment = list(yaml.safe_load_all(TYPO_FILE))[1]
    answer = api.handle(Request.parse(
        "POST", "/apis/apps/v1/namespaces/v4/deployments?fieldValidation=Strict",
        {"authorization": "Bearer t"}, json.dumps(deployment).encode()))
    assert isinstance(answer, Response) and answer.status == 400
    message = json.loads(answer.body)["message"]
    assert message == ('Deployment in version "v1" cannot be handled as a Deployment: '
                       f'strict decoding error: unknown field "{TYPO_PATH}"')
    assert refused == (
        f"{path}: Deployment/v4/web not applied: {message} (fix: correct or remove the "
        "field (`kubectl explain deployment.spec.template.spec.containers` lists the "
        "fields there), or pass --validate=warn to apply the object without the field)")
    assert batch.warnings == []  # not the loader's "(ignored)" too


def test_validate_warn_and_ignore_apply_the_object_without_the_field(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.yaml"
    path.write_text(TYPO_FILE)
    check = _unknown_fields
    warned = manifests.read([str(path)], manifests.WARN, check)
    ignored = manifests.read([str(path)], manifests.IGNORE, check)
    for batch in (warned, ignored):
        assert batch.refused == [] and len(batch.objects) == 3
        (container,) = batch.objects[1]["spec"]["template"]["spec"]["containers"]
        assert "imagePullPolicyy" not in container
    assert warned.warnings == [f'{path}: Deployment/v4/web: unknown field "{TYPO_PATH}"']
    assert ignored.warnings == []
    # every object refused: nothing to apply, and no "no objects found"
    only = tmp_path / "only.yaml"
    only.write_text(TYPO_FILE.split("---\n")[1])
    alone = manifests.read([str(only)], manifests.STRICT, check)
    assert alone.objects == [] and len(alone.refused) == 1
    # a field Kubernetes knows and the lab does not model is still the lab's warning
    known = tmp_path / "known.yaml"
    known.write_text(TYPO_FILE.replace("imagePullPolicyy: Always", "stdin: true"))
    kept = manifests.read([str(known)], manifests.STRICT, check)
    assert kept.refused == [] and any("stdin (ignored)" in w for w in kept.warnings)


def test_validate_takes_kubectls_values() -> None:
    """cmdutil.GetValidationDirective: strict|warn|ignore, and what strconv.ParseBool
    reads as true (strict) or false (ignore); anything else in kubectl's words."""
    assert [manifests.validation(v) for v in ("strict", "warn", "ignore", "true", "True",
                                               "1", "t", "false", "FALSE", "0", "f")] == [
        "strict", "warn", "ignore", "strict", "strict", "strict", "strict", "ignore",
        "ignore", "ignore", "ignore"]
    with pytest.raises(RemoraError) as refused:
        manifests.validation("Strict")
    assert refused.value.problem == ('invalid - validate option "Strict"; must be one of: '
                                     "strict (or true), warn, ignore (or false)")
