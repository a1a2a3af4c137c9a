"""Manifests: the seed's files ship verbatim; admission problems are found before apply."""

from __future__ import annotations

import re

import pytest

from remora.errors import RemoraError
from remora.lab import manifests
from remora.lab.images import ImageMap


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
