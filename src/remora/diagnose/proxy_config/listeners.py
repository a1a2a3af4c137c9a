"""istioctl's listener table: MATCH and DESTINATION descriptions of filter chains.

As istioctl/pkg/writer/envoy/configdump/listener.go (1.11, verbose: the seed's table)
describes them: ``Trans: raw_buffer; App: HTTP; Addr: *:18080`` for a chain match,
``Cluster: inbound|18080||`` / ``InboundPassthroughCluster`` / ``Inline Route: ...`` /
``Non-HTTP/Non-TCP`` for where the chain sends, rows sorted by destination descending.
"""

from __future__ import annotations

import json
from typing import Any

from remora.diagnose.proxy_config.dump import JSON, ConfigDump, typed_config
from remora.diagnose.proxy_config.table import tabwrite

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
# the names Istio 1.6 and before gave the same filters (istioctl of those versions
# compared against them: go-control-plane's wellknown names were these then)
HCM_NAMES = (HCM, "envoy.http_connection_manager")
TCP_PROXY_NAMES = (TCP_PROXY, "envoy.tcp_proxy")

# listener.go: ALPN lists istioctl names instead of printing them.
_PROTOCOL_DESCRIPTIONS = [
    ("App: HTTP TLS", ["http/1.0", "http/1.1", "h2c", "istio-http/1.0", "istio-http/1.1",
                       "istio-h2"]),
    ("App: Istio HTTP Plain", ["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]),
    ("App: TCP TLS", ["istio-peer-exchange", "istio"]),
    ("App: HTTP", ["http/1.0", "http/1.1", "h2c"]),
]


def _address(listener: JSON) -> str:
    return str(listener.get("address", {}).get("socket_address", {}).get("address", ""))


def _port(listener: JSON) -> int:
    return int(listener.get("address", {}).get("socket_address", {}).get("port_value", 0))


def _chains(listener: JSON) -> list[JSON]:
    chains = list(listener.get("filter_chains", []))
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    return chains


def _is_blackhole_tcp(f: JSON) -> bool:
    # istioctl looks for "BlackHoleCluster" anywhere in the serialized tcp_proxy config
    return "BlackHoleCluster" in json.dumps(typed_config(f))


def _v2_first_match(listener: JSON) -> str | None:
    """istioctl up to 1.4 (listener.go retrieveListenerType of 2019): the first
    `envoy.http_connection_manager` or `envoy.tcp_proxy` names the type, BlackHoleCluster
    included. Used for dumps of that era: legacy names with v2 ``config`` blocks."""
    filters = [f for c in _chains(listener) for f in c.get("filters", [])]
    if not any(f.get("name") in ("envoy.http_connection_manager", "envoy.tcp_proxy")
               and "config" in f and "typed_config" not in f for f in filters):
        return None
    for f in filters:
        if f.get("name") == "envoy.http_connection_manager":
            return "HTTP"
        if f.get("name") == "envoy.tcp_proxy":
            return "TCP"
    return "UNKNOWN"


def listener_type(listener: JSON) -> str:
    """HTTP | TCP | HTTP+TCP | UNKNOWN as istioctl classifies it (1.5 on: count HCMs and
    tcp_proxies that do not go to BlackHoleCluster); the legacy names of Istio <= 1.6
    count too, and a v2 dump (``config`` blocks) is classified as istioctl <= 1.4 did."""
    legacy = _v2_first_match(listener)
    if legacy is not None:
        return legacy
    n_http = n_tcp = 0
    for chain in _chains(listener):
        for f in chain.get("filters", []):
            if f.get("name") in HCM_NAMES:
                n_http += 1
            elif f.get("name") in TCP_PROXY_NAMES and not _is_blackhole_tcp(f):
                n_tcp += 1
    if n_http:
        return "HTTP" if not n_tcp else "HTTP+TCP"
    return "TCP" if n_tcp else "UNKNOWN"


def describe_chain_match(m: JSON) -> str:
    """A filter_chain_match (snake_case) in the words of istioctl's MATCH column
    (istioctl/pkg/writer/envoy/configdump/listener.go), e.g. `Trans: raw_buffer; App: HTTP;
    Addr: *:18080` as the seed's listener table shows; `remora explain` uses it too."""
    descrs = []
    if m.get("server_names"):
        descrs.append("SNI: " + ",".join(m["server_names"]))
    if m.get("transport_protocol"):
        descrs.append("Trans: " + m["transport_protocol"])
    alpns = m.get("application_protocols")
    if alpns:
        named = next((d for d, protos in _PROTOCOL_DESCRIPTIONS if protos == alpns), None)
        descrs.append(named or "App: " + ",".join(alpns))
    port = f":{m['destination_port']}" if m.get("destination_port") is not None else ""
    if m.get("prefix_ranges"):
        ranges = ",".join(f"{p.get('address_prefix', '')}/{p.get('prefix_len', 0)}"
                          for p in m["prefix_ranges"])
        descrs.append(f"Addr: {ranges}{port}")
    elif port:
        descrs.append(f"Addr: *{port}")
    return "; ".join(descrs) if descrs else "ALL"


def describe_route_match(m: JSON) -> str:
    """listener.go describeMatch: prefix*, PathPrefix:P (path_separated_prefix, what the
    Kubernetes Gateway API's PathPrefix becomes), the exact path, regex R."""
    conds = []
    if m.get("prefix"):
        conds.append(f"{m['prefix']}*")
    if m.get("path_separated_prefix"):
        conds.append(f"PathPrefix:{m['path_separated_prefix']}")
    if m.get("path"):
        conds.append(m["path"])
    if m.get("safe_regex"):
        conds.append(f"regex {m['safe_regex'].get('regex', '')}")
    return " ".join(conds)


def cluster_of(action: Any) -> str:
    return str(action.get("cluster", "")) if isinstance(action, dict) else ""


def _named_cluster(cluster: str) -> str:
    return cluster if "Cluster" in cluster else f"Cluster: {cluster}"


def _describe_route_config(rc: JSON) -> str:
    vhosts = rc.get("virtual_hosts", [])
    if len(vhosts) == 1 and vhosts[0].get("domains") == ["*"] \
            and len(vhosts[0].get("routes", [])) == 1:
        r = vhosts[0]["routes"][0]
        cluster = cluster_of(r.get("route"))
        if r.get("match", {}).get("prefix") == "/" and cluster:
            return _named_cluster(cluster)
    parts = []
    for vh in vhosts:
        domains = vh.get("domains", [])
        routes = ", ".join(describe_route_match(r.get("match", {}))
                           for r in vh.get("routes", []))
        parts.append(routes if domains == ["*"] else f"{'/'.join(domains)} {routes}")
    return "Inline Route: " + "; ".join(parts)


def _destination(chain: JSON) -> str:
    for f in chain.get("filters", []):
        tc = typed_config(f)
        if f.get("name") in HCM_NAMES:
            if isinstance(tc.get("route_config"), dict):
                return _describe_route_config(tc["route_config"])
            if tc.get("rds", {}).get("route_config_name"):
                return f"Route: {tc['rds']['route_config_name']}"
            return "HTTP"
        if f.get("name") in TCP_PROXY_NAMES and not _is_blackhole_tcp(f):
            return _named_cluster(str(tc.get("cluster", "")))
    return "Non-HTTP/Non-TCP"


def select_listeners(dump: ConfigDump, *, port: int | None = None, address: str | None = None,
                     type_: str | None = None) -> list[JSON]:
    out = [lst for lst in dump.listeners
           if (not address or _address(lst).lower() == address.lower())
           and (not port or _port(lst) == port)
           and (not type_ or listener_type(lst).lower() == type_.lower())]
    return sorted(out, key=lambda lst: (_port(lst), _address(lst), listener_type(lst)))


def _addresses(listener: JSON) -> str:
    """listener.go retrieveListenerAddress + retrieveListenerAdditionalAddresses, joined
    with commas (istioctl 1.20 on: the ADDRESSES column)."""
    extra = [str(a.get("address", {}).get("socket_address", {}).get("address", ""))
             for a in listener.get("additional_addresses", []) or []]
    return ",".join([_address(listener), *extra])


def listener_table(dump: ConfigDump, *, port: int | None = None, address: str | None = None,
                   type_: str | None = None, verbose: bool = True,
                   include_type: bool = False) -> str:
    """The listener table. ``include_type``: `istioctl proxy-config all`'s form
    (configdump.SetPrintConfigTypeInSummary(true)): a leading NAME column of
    ``listener/NAME`` and the ADDRESSES header of today's istioctl (listener.go
    PrintListenerSummary; tests/data/istioctl-configdump/proxyconfig is its golden).
    Without it, the 1.11 ADDRESS table the seed shows."""
    listeners = select_listeners(dump, port=port, address=address, type_=type_)
    if include_type:
        head = "NAME\tADDRESSES\tPORT\t" + ("MATCH\tDESTINATION" if verbose else "TYPE")
        named = [head]
        for lst in listeners:
            name, addrs, p = f"listener/{lst.get('name', '')}", _addresses(lst), _port(lst)
            if not verbose:
                named.append(f"{name}\t{addrs}\t{p}\t{listener_type(lst)}")
                continue
            chains = [(describe_chain_match(c.get("filter_chain_match") or {}),
                       _destination(c))
                      for c in _chains(lst)]
            for match, dest in sorted(chains, key=lambda r: r[1], reverse=True):
                named.append(f"{name}\t{addrs}\t{p}\t{match}\t{dest}")
        return tabwrite(named, padding=1)
    if dump.v2_listeners and not verbose:
        # istioctl <= 1.4 (listener.go PrintListenerSummary of 2019): dump order
        # (dynamic_active_listeners, then static), tabwriter padding 5
        listeners = [lst for lst in dump.listeners if lst in listeners]
        summary = [f"{_address(lst)}\t{_port(lst)}\t{listener_type(lst)}" for lst in listeners]
        return tabwrite(["ADDRESS\tPORT\tTYPE", *summary], padding=5)
    lines = ["ADDRESS\tPORT\tMATCH\tDESTINATION" if verbose else "ADDRESS\tPORT\tTYPE"]
    for lst in listeners:
        addr, p = _address(lst), _port(lst)
        if not verbose:
            lines.append(f"{addr}\t{p}\t{listener_type(lst)}")
            continue
        rows = [(describe_chain_match(c.get("filter_chain_match") or {}), _destination(c))
                for c in _chains(lst)]
        # sort.Slice by destination, descending; it is stable for these sizes
        for match, dest in sorted(rows, key=lambda r: r[1], reverse=True):
            lines.append(f"{addr}\t{p}\t{match}\t{dest}")
    return tabwrite(lines, padding=1)
