from dataclasses import replace

import pytest

from remora.controlplane.injection import (
    inject,
    injection_decision,
    interception_mode,
    istio_init_args,
)
from remora.errors import RemoraError
from remora.resources.loader import load_file
from remora.resources.naming import pod_from_deployment
from remora.resources.objects import Deployment, Namespace, ObjectMeta, Pod
from tests.datafiles import data_path

DATA = data_path("resources")
ENABLED = Namespace(ObjectMeta(name="demo-to", labels={"istio-injection": "enabled"}))
PLAIN = Namespace(ObjectMeta(name="demo-to"))
# pkg/kube/inject/testdata/inject/hello.yaml.injected with today's template
DEFAULT_ARGS = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
                "--log_output_level=default:info"]


def server_pod(annotations: dict[str, str] | None = None,
               labels: dict[str, str] | None = None) -> Pod:
    dep = load_file(DATA / "server.yaml").objects[0]
    assert isinstance(dep, Deployment)
    pod = pod_from_deployment(dep)
    meta = replace(pod.metadata, annotations={**pod.metadata.annotations, **(annotations or {})},
                   labels={**pod.metadata.labels, **(labels or {})})
    return replace(pod, metadata=meta)


def test_seed_injection_adds_init_and_proxy_containers() -> None:
    pod = inject(server_pod(), ENABLED)
    assert [c.name for c in pod.spec.initContainers] == ["istio-init"]
    assert [c.name for c in pod.spec.containers] == ["demo", "istio-proxy"]
    init = pod.spec.initContainers[0]
    assert list(init.args) == DEFAULT_ARGS
    assert init.image == "docker.io/istio/proxyv2:1.11.3"
    assert init.securityContext is not None
    assert init.securityContext["runAsUser"] == 0 and init.securityContext["runAsGroup"] == 0
    proxy = pod.spec.containers[1]
    assert proxy.args[:2] == ("proxy", "sidecar")
    assert proxy.securityContext is not None
    assert (proxy.securityContext["runAsUser"], proxy.securityContext["runAsGroup"]) == (1337, 1337)
    assert "add" not in proxy.securityContext["capabilities"]
    assert pod.metadata.labels["security.istio.io/tlsMode"] == "istio"
    assert pod.metadata.labels["service.istio.io/canonical-name"] == "simple-server"
    assert "sidecar.istio.io/status" in pod.metadata.annotations
    # the -ojson listing of the seed
    listing = pod.to_dict()["spec"]["initContainers"][0]
    assert listing["name"] == "istio-init" and listing["args"][:10] == DEFAULT_ARGS[:10]
    # injecting twice changes nothing
    assert inject(pod, ENABLED) == pod


def test_tproxy_mode() -> None:
    pod = inject(server_pod({"sidecar.istio.io/interceptionMode": "TPROXY"}), ENABLED)
    args = list(pod.spec.initContainers[0].args)
    assert args == [a if a != "REDIRECT" else "TPROXY" for a in DEFAULT_ARGS]
    sc = pod.spec.containers[1].securityContext
    assert sc is not None
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, 1337, False)
    assert sc["capabilities"]["add"] == ["NET_ADMIN"]


def test_capture_annotations_map_to_flags() -> None:
    pod = server_pod({
        "traffic.sidecar.istio.io/includeInboundPorts": "18080,9090",
        "traffic.sidecar.istio.io/excludeInboundPorts": "8081",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "172.16.0.0/16",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.1/32",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "3306",
        "traffic.sidecar.istio.io/includeOutboundPorts": "443",
        "traffic.sidecar.istio.io/excludeInterfaces": "eth1",
    })
    assert istio_init_args(pod) == [
        "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
        "-i", "172.16.0.0/16", "-x", "10.0.0.1/32", "-b", "18080,9090",
        "-d", "15090,15021,8081,15020", "-q", "443", "-o", "3306", "-c", "eth1",
        "--log_output_level=default:info"]
    # the status port is not repeated when already excluded
    pod2 = server_pod({"traffic.sidecar.istio.io/excludeInboundPorts": "15020"})
    assert "15090,15021,15020" in istio_init_args(pod2)


@pytest.mark.parametrize(("ns", "labels", "annotations", "expected"), [
    (ENABLED, {}, {}, True),
    (ENABLED, {"sidecar.istio.io/inject": "false"}, {}, False),
    (ENABLED, {}, {"sidecar.istio.io/inject": "false"}, False),
    (ENABLED, {"sidecar.istio.io/inject": "true"}, {"sidecar.istio.io/inject": "false"}, True),
    (PLAIN, {}, {}, False),
    (PLAIN, {}, {"sidecar.istio.io/inject": "true"}, False),  # webhook not called
    (PLAIN, {"sidecar.istio.io/inject": "true"}, {}, True),
    (None, {"sidecar.istio.io/inject": "true"}, {}, True),
    (Namespace(ObjectMeta(name="demo-to", labels={"istio-injection": "disabled"})),
     {"sidecar.istio.io/inject": "true"}, {}, False),
])
def test_injection_decision_like_istio(ns: Namespace | None, labels: dict[str, str],
                                       annotations: dict[str, str], expected: bool) -> None:
    pod = server_pod(annotations, labels)
    decided, reason = injection_decision(pod, ns)
    assert decided is expected and reason
    injected = inject(pod, ns)
    assert (len(injected.spec.containers) == 2) is expected


def test_bad_annotations_are_errors_naming_the_pod() -> None:
    with pytest.raises(RemoraError) as err:
        interception_mode(server_pod({"sidecar.istio.io/interceptionMode": "tproxy"}))
    assert "Pod/demo-to/simple-server-" in err.value.one_line()
    with pytest.raises(RemoraError, match="is not a port"):
        istio_init_args(server_pod({"traffic.sidecar.istio.io/excludeOutboundPorts": "x"}))
    with pytest.raises(RemoraError, match="is not a CIDR"):
        istio_init_args(server_pod({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "1.2"}))


def test_interception_none_has_no_init_container() -> None:
    pod = inject(server_pod({"sidecar.istio.io/interceptionMode": "NONE"}), ENABLED)
    assert pod.spec.initContainers == () and len(pod.spec.containers) == 2


def test_init_argv_parses_with_the_capture_engine() -> None:
    from remora.capture.argv import parse_args

    cfg = parse_args(istio_init_args(server_pod({
        "sidecar.istio.io/interceptionMode": "TPROXY",
        "traffic.sidecar.istio.io/excludeInboundPorts": "8081",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "3306",
        "traffic.sidecar.istio.io/includeOutboundPorts": "443",
        "traffic.sidecar.istio.io/excludeInterfaces": "eth1"})), env={})
    assert cfg.inbound_interception_mode == "TPROXY"
    assert cfg.inbound_ports_include == ("*",) and cfg.outbound_ip_ranges_include == ("*",)
    assert cfg.inbound_ports_exclude == ("15090", "15021", "8081", "15020")
    assert cfg.outbound_ports_exclude == ("3306",) and cfg.outbound_ports_include == ("443",)
    assert cfg.exclude_interfaces == ("eth1",) and cfg.proxy_uid == ("1337",)
    default = parse_args(DEFAULT_ARGS, env={})
    assert default.inbound_interception_mode == "REDIRECT"
    assert default.outbound_ip_ranges_exclude == ()
