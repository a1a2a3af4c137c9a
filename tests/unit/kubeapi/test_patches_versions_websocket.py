"""The pure pieces of the lab's Kubernetes API: patch bodies by content type, resource
versions and watch events, WebSocket framing for exec."""

from __future__ import annotations

import json
import os
import struct

import pytest

from remora.kubeapi import patches
from remora.kubeapi import websocket as ws
from remora.kubeapi.messages import ApiError
from remora.kubeapi.versions import Versions, events, key_of, parse_version

DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment",
          "metadata": {"name": "web", "namespace": "demo", "labels": {"a": "1"}},
          "spec": {"template": {"spec": {"containers": [
              {"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}]},
              {"name": "side", "image": "y"}]}}}}


def test_merge_patch_follows_rfc7386_example() -> None:
    # RFC 7386 section 3's example
    target = {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
              "tags": ["example", "sample"], "content": "This will be unchanged"}
    patch = {"title": "Hello!", "phoneNumber": "+01-123-456-7890",
             "author": {"familyName": None}, "tags": ["example"]}
    assert patches.merge_patch(target, patch) == {
        "title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
        "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"}


def test_json_patch_operations_and_failed_test() -> None:
    ops = [{"op": "add", "path": "/metadata/labels/b", "value": "2"},
           {"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "z"},
           {"op": "remove", "path": "/metadata/labels/a"},
           {"op": "copy", "from": "/metadata/labels/b", "path": "/metadata/labels/c"},
           {"op": "move", "from": "/metadata/labels/c", "path": "/metadata/labels/d"},
           {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "n"}},
           {"op": "test", "path": "/metadata/name", "value": "web"}]
    out = patches.apply_patch(patches.JSON_PATCH, DEPLOY, json.dumps(ops).encode())
    assert out["metadata"]["labels"] == {"b": "2", "d": "2"}
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == [
        "app", "side", "n"]
    assert out["spec"]["template"]["spec"]["containers"][1]["image"] == "z"
    assert DEPLOY["metadata"]["labels"] == {"a": "1"}  # the input is not changed
    with pytest.raises(ApiError) as failed:
        patches.json_patch(DEPLOY, [{"op": "test", "path": "/metadata/name", "value": "x"}])
    assert failed.value.code == 422
    with pytest.raises(ApiError, match="does not exist"):
        patches.json_patch(DEPLOY, [{"op": "remove", "path": "/spec/nope/x"}])


def test_strategic_merge_merges_containers_by_name_and_apply_patch_too() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "B", "value": "2"}]}]}}}}
    for kind in (patches.STRATEGIC, patches.APPLY):
        out = patches.apply_patch(kind + "; charset=utf-8", DEPLOY, json.dumps(patch).encode())
        containers = out["spec"]["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["app", "side"]
        assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    # a JSON merge patch replaces the list, as on a cluster
    merged = patches.apply_patch(patches.MERGE, DEPLOY, json.dumps(patch).encode())
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["app"]
    with pytest.raises(ApiError) as unsupported:
        patches.apply_patch("application/xml", DEPLOY, b"{}")
    assert unsupported.value.code == 415


def test_versions_change_only_with_content_and_remember_deletions() -> None:
    v = Versions(start=100)
    a = {"metadata": {"name": "a", "namespace": "n"}, "spec": {"x": 1}}
    b = {"metadata": {"name": "b", "namespace": "n"}, "spec": {"x": 1}}
    v.stamp("Pod", [a, b], complete=True)
    first = (a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"])
    assert first == ("101", "102")
    a2 = {"metadata": {"name": "a", "namespace": "n"}, "spec": {"x": 1}}
    b2 = {"metadata": {"name": "b", "namespace": "n"}, "spec": {"x": 2}}
    listed = v.stamp("Pod", [a2, b2], complete=True)
    assert a2["metadata"]["resourceVersion"] == "101"  # unchanged content, same version
    assert b2["metadata"]["resourceVersion"] == "103" and listed == 103
    v.stamp("Pod", [b2], complete=True)
    gone = v.deleted_since("Pod", 103)
    assert [g["metadata"]["name"] for g in gone] == ["a"]
    assert int(gone[0]["metadata"]["resourceVersion"]) > 103
    assert v.deleted_since("Pod", v.current) == []
    assert v.deleted_since("Service", 0) == []
    assert (parse_version(""), parse_version("0"), parse_version("17")) == (None, None, 17)


def test_tombstones_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from remora.kubeapi import versions

    monkeypatch.setattr(versions, "MAX_TOMBSTONES", 3)
    v = Versions(start=0)
    for i in range(6):
        v.stamp("Pod", [{"metadata": {"name": f"p{i}", "namespace": "n"}}], complete=True)
    v.stamp("Pod", [], complete=True)
    # p0..p4 went one by one, p5 last: the three most recent deletions are kept
    assert sorted(o["metadata"]["name"] for o in v.deleted_since("Pod", 0)) == [
        "p3", "p4", "p5"]


def test_watch_events_between_two_views() -> None:
    def obj(name: str, rv: str) -> tuple[dict[str, object], dict[str, object]]:
        o = {"metadata": {"name": name, "namespace": "n", "resourceVersion": rv}}
        return o, o

    before = {key_of("Pod", obj(n, rv)[1]): obj(n, rv)  # type: ignore[arg-type]
              for n, rv in (("a", "1"), ("b", "2"))}
    after = {key_of("Pod", obj(n, rv)[1]): obj(n, rv)  # type: ignore[arg-type]
             for n, rv in (("b", "3"), ("c", "4"))}
    got = [(kind, pair[1]["metadata"]["name"]) for kind, pair in events(before, after)]  # type: ignore[index]
    assert sorted(got) == [("ADDED", "c"), ("DELETED", "a"), ("MODIFIED", "b")]
    assert events(after, after) == []


def test_websocket_frames_round_trip_masked_and_long() -> None:
    # RFC 6455 section 1.3's handshake example
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    payload = bytes([ws.STDIN]) + b"hello"
    mask = os.urandom(4)
    masked = bytes([0x82, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
    frame, used = ws.parse(masked + b"rest")
    assert frame is not None and used == len(masked)
    assert (frame.fin, frame.opcode, frame.payload) == (True, ws.OP_BINARY, payload)
    assert ws.parse(masked[:-1]) == (None, 0)
    big = ws.channel(ws.STDOUT, b"x" * 70000)
    assert big[1] == 127 and struct.unpack("!Q", big[2:10])[0] == 70001
    frame, used = ws.parse(big)
    assert frame is not None and frame.payload[0] == ws.STDOUT and used == len(big)
    mid = ws.frame(ws.OP_BINARY, b"y" * 300)
    assert mid[1] == 126 and ws.parse(mid)[0].payload == b"y" * 300  # type: ignore[union-attr]


def test_exit_status_is_what_kubectl_reads_the_exit_code_from() -> None:
    assert ws.exit_status(0) == {"metadata": {}, "status": "Success"}
    failed = ws.exit_status(3)
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
