"""Istio's TestIptables cases as CaptureConfigs.

From tests/data/conformance/istio-iptables/cases.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from remora.capture.config import CaptureConfig, build_config, with_overrides

# Istio config field -> (remora flag field | env var). EnableIPv6, DNS servers and DryRun
# are facts or modes, set after the flags are parsed.
FIELD_TO_FLAG = {
    "ProxyPort": "proxy_port",
    "InboundCapturePort": "inbound_capture_port",
    "InboundTunnelPort": "inbound_tunnel_port",
    "ProxyUID": "proxy_uid",
    "ProxyGID": "proxy_gid",
    "InboundTProxyMark": "inbound_tproxy_mark",
    "InboundTProxyRouteTable": "inbound_tproxy_route_table",
    "InboundPortsInclude": "inbound_ports_include",
    "InboundPortsExclude": "inbound_ports_exclude",
    "OutboundIPRangesInclude": "outbound_ip_ranges_include",
    "OutboundIPRangesExclude": "outbound_ip_ranges_exclude",
    "OutboundPortsInclude": "outbound_ports_include",
    "InboundInterceptionMode": "inbound_interception_mode",
    "RedirectDNS": "redirect_dns",
    "ExcludeInterfaces": "exclude_interfaces",
    "RerouteVirtualInterfaces": "reroute_virtual_interfaces",
    "DropInvalid": "drop_invalid",
    "DryRun": "dry_run",
}
FIELD_TO_ENV = {
    "OwnerGroupsInclude": "ISTIO_OUTBOUND_OWNER_GROUPS",
    "OwnerGroupsExclude": "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "HostIPv4LoopbackCidr": "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
}


def load_cases(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "cases.json").read_text())
    return data


def case_config(base: dict[str, Any], mutations: dict[str, Any]) -> CaptureConfig:
    merged = {**base, **mutations}
    given: dict[str, str | bool | None] = {}
    env: dict[str, str] = {}
    for field, value in merged.items():
        if field in FIELD_TO_FLAG:
            given[FIELD_TO_FLAG[field]] = value
        elif field in FIELD_TO_ENV:
            env[FIELD_TO_ENV[field]] = value
        elif field not in ("EnableIPv6", "DNSServersV4", "DNSServersV6"):
            raise AssertionError(f"cases.json field {field} has no remora mapping")
    config = build_config(given, env)
    return with_overrides(
        config,
        enable_ipv6=bool(merged.get("EnableIPv6", False)),
        dns_servers_v4=tuple(merged.get("DNSServersV4", ())),
        dns_servers_v6=tuple(merged.get("DNSServersV6", ())),
    )
