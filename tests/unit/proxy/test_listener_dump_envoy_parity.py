"""``/config_dump``'s dynamic listeners while LDS updates drain, held to a real Envoy 1.40
on loopback (no root): the same bootstrap (listeners from a file, path_config_source) and
command line run by `envoy` and by `remora proxy` side by side, the same updates, the
ListenersConfigDump compared.

- a listener removed: shown with a ``draining_state`` only (the version, config and
  last_updated it had while active), with or without connections, until --drain-time-s is
  over, then gone;
- a full update (a listener field other than its filter chains): ``active_state`` (the new
  version) and ``draining_state`` (the old) in one entry, the draining one gone after the
  drain time;
- an in-place update (filter chains only): no ``draining_state``; the active_state shows
  the new config and update time but keeps the version it was first added with (Envoy
  1.40, twice in a row).
Needs the envoy binary (marker `envoy`)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import addr, free_port, write_atomic

pytestmark = pytest.mark.envoy

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
DRAIN_TIME_S = 10  # the dumps during the drain come within its first half, even when loaded


def _listener(name: str, port: int, body: str, **extra: Any) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": name, "route_config": {"virtual_hosts": [{
        "name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
            "status": 200, "body": {"inline_string": body}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}
    return {"name": name, "address": addr("127.0.0.1", port), **extra, "filter_chains": [
        {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                      "typed_config": hcm}]}]}


def _lds(version: str, *listeners: dict[str, Any]) -> dict[str, Any]:
    return {"version_info": version,
            "resources": [{"@type": LISTENER, **lst} for lst in listeners]}


def _body(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


def _until_body(port: int, body: bytes) -> None:
    deadline = time.monotonic() + 5
    while _body(port) != body:
        assert time.monotonic() < deadline, f"no {body!r} on {port}"
        time.sleep(0.05)


def _dynamic(admin: int) -> dict[str, dict[str, Any]]:
    """The dump's dynamic listeners by name: each state's version_info, listener config
    and last_updated."""
    dump = json.loads(lp.admin_text(admin, "/config_dump"))
    for c in dump["configs"]:
        if c["@type"].endswith("ListenersConfigDump"):
            return {d["name"]: {k: v for k, v in d.items() if k != "name"}
                    for d in c.get("dynamic_listeners", [])}
    return {}


def _summary(dynamic: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What is compared: per listener, per state, the version and the config (but its
    address: each proxy has ports of its own)."""
    return {name: {state: (v["version_info"],
                           {k: x for k, x in v["listener"].items() if k != "address"})
                   for state, v in states.items()}
            for name, states in dynamic.items()}


def _story(kind: str, tmp: Path) -> dict[str, Any]:
    ports = {n: free_port() for n in ("web", "gone", "full", "admin")}
    lds = tmp / "lds.json"
    v1 = [_listener("web", ports["web"], "v1"), _listener("gone", ports["gone"], "g"),
          _listener("full", ports["full"], "f")]
    write_atomic(lds, _lds("1", *v1))
    boot = {"admin": {"address": addr("127.0.0.1", ports["admin"])},
            "node": {"id": "n", "cluster": "c"},
            "dynamic_resources": {"lds_config": {"resource_api_version": "V3",
                                                 "path_config_source": {"path": str(lds)}}}}
    cfg = tmp / "bootstrap.json"
    cfg.write_text(json.dumps(boot))
    out: dict[str, Any] = {}
    with lp.loopback_proxy(kind, cfg, ports["web"], ports["gone"], ports["full"],
                           args=["--drain-time-s", str(DRAIN_TIME_S)]):
        held = socket.create_connection(("127.0.0.1", ports["gone"]))  # one to drain
        out["before"] = _dynamic(ports["admin"])
        time.sleep(0.3)  # the update's last_updated differs from the first's
        t_update = time.time()
        write_atomic(lds, _lds("2", _listener("web", ports["web"], "v2"),
                               _listener("full", ports["full"], "f",
                                         per_connection_buffer_limit_bytes=32768)))
        _until_body(ports["web"], b"v2")
        time.sleep(0.3)  # the other listeners of the update too
        out["draining"] = _dynamic(ports["admin"])
        write_atomic(lds, _lds("3", _listener("web", ports["web"], "v3"),
                               _listener("full", ports["full"], "f",
                                         per_connection_buffer_limit_bytes=32768)))
        _until_body(ports["web"], b"v3")
        out["second"] = _dynamic(ports["admin"])
        assert time.time() - t_update < DRAIN_TIME_S / 2, "the story ran too slowly"
        time.sleep(max(0.0, t_update + DRAIN_TIME_S + 1.5 - time.time()))
        out["after"] = _dynamic(ports["admin"])
        out["t_update"] = t_update
        held.close()
    return out


def test_draining_listeners_in_the_config_dump_as_envoy(tmp_path: Path) -> None:
    def story(kind: str) -> dict[str, Any]:
        (tmp_path / kind).mkdir()
        return _story(kind, tmp_path / kind)
    seen = lp.each_kind(story)
    for phase in ("before", "draining", "second", "after"):
        assert _summary(seen["remora"][phase]) == _summary(seen["envoy"][phase]), phase
    envoy = seen["envoy"]
    states = {name: sorted(s) for name, s in envoy["draining"].items()}
    assert states == {"web": ["active_state"], "gone": ["draining_state"],
                      "full": ["active_state", "draining_state"]}
    after = {name: sorted(s) for name, s in envoy["after"].items()}
    assert after == {"web": ["active_state"], "full": ["active_state"]}
    for kind, s in seen.items():
        draining, before = s["draining"], s["before"]
        # the draining state is the old version as it was while active
        assert draining["gone"]["draining_state"] == before["gone"]["active_state"], kind
        assert draining["full"]["draining_state"] == before["full"]["active_state"], kind
        assert draining["full"]["active_state"]["version_info"] == "2"
        # in place: version 1 still, the update's config and time
        web = s["second"]["web"]["active_state"]
        assert web["version_info"] == "1", kind
        assert web["last_updated"] > before["web"]["active_state"]["last_updated"], kind
