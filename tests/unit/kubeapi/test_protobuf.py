"""The protobuf body decoder (remora.kubeapi.protobuf), pure: bytes in, the JSON client-go
would have sent out.

tests/data/kubeapi/protobuf holds what kubectl 1.32.4 sent for its typed `create`
commands (from its own -v=9 hex dump) beside what it prints for the same command with
`--dry-run=client -o json` (scripts/capture_kubectl_protobuf.py): the decoder must turn
the first into the second. The hand-built bodies below reach the parts kubectl's
commands do not set (inlined structs, IntOrString strings, Quantities, pointers to zero,
Time); their field numbers are spelt out from k8s.io/api's generated.proto.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remora.kubeapi.messages import ApiError
from remora.kubeapi.protobuf import decode

DATA = Path(__file__).parents[2] / "data" / "kubeapi" / "protobuf"


# -- a minimal wire encoder for the hand-built bodies ----------------------------------
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 go on the wire sign-extended to 64 bits
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vi(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def ld(num: int, *parts: bytes | str) -> bytes:
    data = b"".join(p.encode() if isinstance(p, str) else p for p in parts)
    return varint(num << 3 | 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes, **extra: str) -> bytes:
    # runtime.Unknown: typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3
    out = b"k8s\x00" + ld(1, ld(1, api_version), ld(2, kind)) + ld(2, raw)
    if "encoding" in extra:
        out += ld(3, extra["encoding"])
    return out


def meta(name: str, **labels: str) -> bytes:
    # ObjectMeta: name = 1, labels = 11 (map entries: key = 1, value = 2)
    return ld(1, name) + b"".join(ld(11, ld(1, k), ld(2, v)) for k, v in labels.items())


@pytest.mark.parametrize("name", ["namespace", "deployment", "service", "headless"])
def test_kubectl_bodies_decode_to_the_json_kubectl_prints(name: str) -> None:
    body = (DATA / f"{name}.bin").read_bytes()
    assert body.startswith(b"k8s\x00")
    obj, warnings = decode(body)
    assert obj == json.loads((DATA / f"{name}.json").read_text())
    assert warnings == []


def test_kubectl_deployment_keeps_replicas_zero_and_drops_omitempty_zeros() -> None:
    obj, _ = decode((DATA / "deployment.bin").read_bytes())
    # *int32 replicas: a pointer, so 0 is sent (and means 0, not the default 1)
    assert obj["spec"]["replicas"] == 0
    # minReadySeconds int32 `omitempty`: written on the wire as 0, left out by JSON
    assert "minReadySeconds" not in obj["spec"]
    # the zero metav1.Time is JSON null; a non-pointer struct is always there
    assert obj["metadata"]["creationTimestamp"] is None
    assert obj["status"] == {} and obj["spec"]["strategy"] == {}
    container = obj["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/simple-server", "-port", "8080"]
    assert container["ports"] == [{"containerPort": 8080}]


def test_inlined_structs_intorstring_quantity_pointers_and_time() -> None:
    probe = ld(11,  # Container.readinessProbe = 11: Probe
               ld(1, ld(2, ld(1, "/healthz"),  # Probe.handler (inline) = 1 -> httpGet = 2
                         ld(2, vi(1, 1), ld(3, "http")))),  # port IntOrString "http"
               vi(2, 0),  # initialDelaySeconds = 2, 0 and omitempty: left out
               vi(7, 0))  # terminationGracePeriodSeconds *int64 = 7: kept at 0
    resources = ld(8, ld(1, ld(1, "memory"), ld(2, ld(1, "64Mi"))))  # limits = 1
    env = ld(7, ld(1, "EMPTY"), ld(2, "")) + ld(7, ld(1, "X"), ld(2, "1"))
    container = ld(2, ld(1, "app"), ld(2, "img"), probe, resources, env,
                   ld(6, ld(1, "http"), vi(3, 8080)))
    volume = ld(1, ld(1, "scratch"), ld(2, ld(2, ld(1, "Memory"))))  # emptyDir = 2
    spec = ld(2, volume, container, vi(25, -5))  # priority *int32 = 25, negative
    stamp = ld(8, vi(1, 1_700_000_000))  # ObjectMeta.creationTimestamp = 8: Time
    obj, warnings = decode(envelope("v1", "Pod", ld(1, meta("p", app="web"), stamp) + spec))
    assert warnings == []
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Pod"
    assert obj["metadata"] == {"name": "p", "labels": {"app": "web"},
                               "creationTimestamp": "2023-11-14T22:13:20Z"}
    assert obj["spec"]["priority"] == -5
    assert obj["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {"medium": "Memory"}}]
    c = obj["spec"]["containers"][0]
    assert c["readinessProbe"] == {"httpGet": {"path": "/healthz", "port": "http"},
                                   "terminationGracePeriodSeconds": 0}
    assert c["resources"] == {"limits": {"memory": "64Mi"}}
    assert c["env"] == [{"name": "EMPTY"}, {"name": "X", "value": "1"}]
    assert c["ports"] == [{"name": "http", "containerPort": 8080}]


def test_deployment_strategy_intorstring_ints_and_percentages() -> None:
    rolling = ld(2, ld(1, vi(1, 0), vi(2, 0)), ld(2, vi(1, 1), ld(3, "25%")))
    spec = ld(2, vi(1, 3), ld(2, ld(1, ld(1, "app"), ld(2, "web"))),
              ld(4, ld(1, "RollingUpdate"), rolling))
    obj, _ = decode(envelope("apps/v1", "Deployment", ld(1, meta("d")) + spec))
    assert obj["spec"]["replicas"] == 3
    assert obj["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert obj["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxUnavailable": 0, "maxSurge": "25%"}}


def test_an_unknown_field_number_is_warned_about_and_skipped() -> None:
    # as the lab's JSON path warns about a field it does not know and ignores it
    body = envelope("v1", "Namespace", ld(1, meta("n"), ld(999, "future")))
    obj, warnings = decode(body)
    assert obj["metadata"] == {"name": "n"}
    assert len(warnings) == 1
    assert "unknown field number 999" in warnings[0]
    assert "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta at metadata" in warnings[0]


def test_refusals_name_what_is_wrong() -> None:
    with pytest.raises(ApiError) as kind:
        decode(envelope("v1", "ConfigMap", ld(1, meta("c"))))
    assert kind.value.code == 415 and "ConfigMap" in kind.value.message
    assert "Deployment (apps/v1)" in kind.value.message
    with pytest.raises(ApiError) as encoded:
        decode(envelope("v1", "Namespace", b"", encoding="gzip"))
    assert encoded.value.code == 415 and "gzip" in encoded.value.message
    with pytest.raises(ApiError) as magic:
        decode(b'{"kind": "Namespace"}')
    assert magic.value.code == 400 and "magic" in magic.value.message
    truncated = envelope("v1", "Namespace", ld(1, meta("n")))[:-2]
    with pytest.raises(ApiError) as short:
        decode(truncated)
    assert short.value.code == 400 and "malformed" in short.value.message
    # a string field sent as a varint
    with pytest.raises(ApiError) as wire:
        decode(envelope("v1", "Namespace", ld(1, vi(1, 7))))
    assert wire.value.code == 400 and "metadata.name" in wire.value.message


def test_delete_options_and_scale() -> None:
    opts, _ = decode(envelope("meta.k8s.io/v1", "DeleteOptions",
                              ld(4, "Foreground") + ld(5, "All") + vi(1, 0)))
    assert opts == {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions",
                    "propagationPolicy": "Foreground", "dryRun": ["All"],
                    "gracePeriodSeconds": 0}
    scale, _ = decode(envelope("autoscaling/v1", "Scale",
                               ld(1, meta("web")) + ld(2, vi(1, 0))))
    # autoscaling/v1 ScaleSpec.replicas is a plain int32 with omitempty: JSON leaves 0 out
    # (and the apiserver reads the missing field as 0)
    assert scale["spec"] == {}
    scale, _ = decode(envelope("autoscaling/v1", "Scale",
                               ld(1, meta("web")) + ld(2, vi(1, 2))))
    assert scale["spec"] == {"replicas": 2}
