from __future__ import annotations

from typing import Any

import pytest

from remora.errors import RemoraError
from remora.node import podspec

POD: dict[str, Any] = {"metadata": {"name": "p-1", "namespace": "demo-to", "labels": {"app": "x"}},
                       "spec": {}}


def test_command_args_and_env_with_downward_api() -> None:
    container = {"name": "c", "command": ["/bin/app"], "args": ["--port", 18080],
                 "env": [{"name": "A", "value": "1"},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {
                             "fieldPath": "metadata.name"}}},
                         {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {
                             "fieldPath": "status.podIP"}}},
                         {"name": "APP", "valueFrom": {"fieldRef": {
                             "fieldPath": "metadata.labels['app']"}}}]}
    spec = podspec.process_spec(POD, container, "10.20.0.77", "remora-node-1")
    assert spec.argv == ["/bin/app", "--port", "18080"]
    assert spec.env["A"] == "1" and spec.env["POD_NAME"] == "p-1"
    assert spec.env["INSTANCE_IP"] == "10.20.0.77" and spec.env["APP"] == "x"
    assert spec.env["HOSTNAME"] == "p-1" and "PATH" in spec.env
    assert (spec.uid, spec.gid, spec.caps, spec.ready_port) == (None, None, (), None)


def test_security_context_like_istio_proxy_in_tproxy_mode() -> None:
    container = {"name": "istio-proxy", "command": ["remora", "proxy"],
                 "securityContext": {"runAsUser": 0, "runAsGroup": 1337,
                                     "capabilities": {"add": ["NET_ADMIN"]}},
                 "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}}}
    spec = podspec.process_spec(POD, container, "10.20.0.77")
    assert (spec.uid, spec.gid, spec.caps, spec.ready_port) == (0, 1337, ("net_admin",), 15021)


def test_pod_level_security_context_and_named_probe_port() -> None:
    pod = {**POD, "spec": {"securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}}
    container = {"name": "c", "command": ["x"], "ports": [{"name": "http", "containerPort": 81}],
                 "readinessProbe": {"tcpSocket": {"port": "http"}}}
    spec = podspec.process_spec(pod, container, "10.20.0.77")
    assert (spec.uid, spec.gid, spec.ready_port) == (1337, 1337, 81)


def test_container_without_command_names_the_image_and_the_fix() -> None:
    with pytest.raises(RemoraError, match=r"image 'vasth/simple-server'\) has no command") as info:
        podspec.process_spec(POD, {"name": "demo", "image": "vasth/simple-server"}, "10.20.0.77")
    assert "pod demo-to/p-1" in info.value.problem
    assert info.value.fix and "map its image" in info.value.fix


def test_probe_target_is_what_kubelets_prober_dials() -> None:
    # the start of prober.go's "Readiness probe failed: ..." when the connection fails:
    # Go's dial error, inside net/http's `Get "URL": ...` for httpGet
    tcp = {"readinessProbe": {"tcpSocket": {"port": 8080}}}
    assert podspec.probe_target(tcp, "10.20.0.3") == "dial tcp 10.20.0.3:8080"
    assert podspec.probe_target(tcp, "fd00:10:20::3") == "dial tcp [fd00:10:20::3]:8080"
    http = {"ports": [{"name": "web", "containerPort": 9000}],
            "readinessProbe": {"httpGet": {"port": "web", "path": "/healthz"}}}
    assert podspec.probe_target(http, "10.20.0.3") == \
        'Get "http://10.20.0.3:9000/healthz": dial tcp 10.20.0.3:9000'
    other = {"readinessProbe": {"httpGet": {"port": 15021, "host": "127.0.0.1",
                                            "scheme": "HTTPS"}}}
    assert podspec.probe_target(other, "10.20.0.3") == \
        'Get "https://127.0.0.1:15021": dial tcp 127.0.0.1:15021'
    exec_probe = {"readinessProbe": {"exec": {"command": ["true"]}}}
    assert podspec.probe_target(exec_probe, "10.20.0.3") == ""
    assert podspec.probe_target({}, "10.20.0.3") == ""
