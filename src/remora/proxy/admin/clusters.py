"""``GET /clusters`` in Envoy's two forms, from ``ClusterManagerImpl.describe()``.

https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--clusters
Field order, names and the JSON shape (``admin.v3.Clusters``; proto3 JSON, so zero counters
and false flags are left out) were checked against Envoy 1.40's output for STATIC and
ORIGINAL_DST clusters.
"""

from __future__ import annotations

from typing import Any

from remora.proxy.upstream.cluster import HOST_COUNTERS, HOST_GAUGES
from remora.proxy.upstream.config import Host

_THRESHOLDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def _host_facts(host: Host | None) -> tuple[str, bool, int, int, tuple[str, str, str]]:
    """hostname, healthy, weight, priority, locality; an ORIGINAL_DST host has none set."""
    if host is None:
        return "", True, 1, 0, ("", "", "")
    return host.hostname, host.healthy, host.weight, host.priority, host.locality


def clusters_text(described: list[dict[str, Any]]) -> str:
    lines = []
    for c in described:
        n = c["name"]
        lines.append(f"{n}::observability_name::{n}")
        for prio, values in (("default_priority", c["thresholds"]),
                             ("high_priority", c["high_thresholds"])):
            lines.extend(f"{n}::{prio}::{k}::{values[k]}" for k in _THRESHOLDS)
        lines.append(f"{n}::added_via_api::{str(c['added_via_api']).lower()}")
        for h in c["hosts"]:
            at = f"{n}::{h['address']}::"
            hostname, healthy, weight, priority, (region, zone, sub_zone) = \
                _host_facts(h["host"])
            lines.extend(f"{at}{k}::{v}" for k, v in sorted(h["stats"].items()))
            lines += [f"{at}hostname::{hostname}",
                      f"{at}health_flags::{'healthy' if healthy else '/failed_eds_health'}",
                      f"{at}weight::{weight}", f"{at}region::{region}", f"{at}zone::{zone}",
                      f"{at}sub_zone::{sub_zone}", f"{at}canary::false",
                      f"{at}priority::{priority}",
                      # no outlier detection in remora: Envoy's "not computed" value
                      f"{at}success_rate::-1", f"{at}local_origin_success_rate::-1"]
    return "\n".join(lines) + "\n"


def _socket_address(address: str) -> dict[str, Any]:
    ip, _, port = address.rpartition(":")
    return {"socket_address": {"address": ip.strip("[]"), "port_value": int(port)}}


def _stat(name: str, value: int, gauge: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if gauge:
        out["type"] = "GAUGE"
    if value:
        out["value"] = str(value)  # uint64 in proto3 JSON
    return out


def _host_json(h: dict[str, Any]) -> dict[str, Any]:
    hostname, healthy, weight, priority, (region, zone, sub_zone) = _host_facts(h["host"])
    stats = h["stats"]
    out: dict[str, Any] = {
        "address": _socket_address(h["address"]),
        "stats": [_stat(k, stats[k], False) for k in HOST_COUNTERS] +
                 [_stat(k, stats[k], True) for k in HOST_GAUGES],
        "health_status": {"eds_health_status": "HEALTHY" if healthy else "UNHEALTHY"},
        "weight": weight,
    }
    if hostname:
        out["hostname"] = hostname
    out["locality"] = {k: v for k, v in
                       (("region", region), ("zone", zone), ("sub_zone", sub_zone)) if v}
    if priority:
        out["priority"] = priority
    return out


def clusters_json(described: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = []
    for c in described:
        status: dict[str, Any] = {"name": c["name"]}
        if c["added_via_api"]:
            status["added_via_api"] = True
        if c["hosts"]:
            status["host_statuses"] = [_host_json(h) for h in c["hosts"]]
        status["circuit_breakers"] = {"thresholds": [
            {k: c["thresholds"][k] for k in _THRESHOLDS},
            {"priority": "HIGH", **{k: c["high_thresholds"][k] for k in _THRESHOLDS}}]}
        status["observability_name"] = c["name"]
        statuses.append(status)
    return {"cluster_statuses": statuses}
