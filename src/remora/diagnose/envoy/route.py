"""Network filters of the chosen chain: tcp_proxy's cluster, or the HTTP route to one.

Virtual host selection follows Envoy's order (exact domain, then the longest ``*suffix``,
then the longest ``prefix*``, then ``*``; api-v3/config/route/v3/route_components.proto
VirtualHost.domains); the first route whose path match fits wins.
"""

from __future__ import annotations

import re
from typing import Any

from remora.diagnose.envoy.config import JSON, EnvoyConfig
from remora.diagnose.envoy.trace import (
    HCM,
    TCP_PROXY,
    Downstream,
    SidecarTrace,
    fail,
    typed,
)
from remora.diagnose.facts import Missing, hostport


def network_filters(cfg: EnvoyConfig, chain: JSON, ds: Downstream, t: SidecarTrace,
                     pod: str) -> str | None:
    for f in chain.get("filters", []) or []:
        name = str(f.get("name", ""))
        tc = typed(f)
        kind = str(tc.get("@type", ""))
        if name in TCP_PROXY or kind.endswith("TcpProxy"):
            t.network_filter = "envoy.filters.network.tcp_proxy"
            if tc.get("cluster"):
                return str(tc["cluster"])
            weighted = (tc.get("weighted_clusters") or {}).get("clusters") or []
            if weighted:
                t.notes.append("tcp_proxy weighted_clusters: " + ", ".join(
                    f"{w.get('name')} ({w.get('weight')})" for w in weighted))
                return str(weighted[0].get("name"))
            fail(t, "no route", f"tcp_proxy in chain {t.chain} names no cluster")
            return None
        if name in HCM or kind.endswith("HttpConnectionManager"):
            t.network_filter = "envoy.filters.network.http_connection_manager"
            t.use_remote_address = bool(tc.get("use_remote_address", False))
            t.alpn_override = _istio_alpn(tc)
            return _http_route(cfg, tc, ds, t, pod)
    t.missing.append(Missing(f"network filters of chain {t.chain}",
                             f"istioctl proxy-config listener {pod} -o json"))
    t.notes.append(f"chain {t.chain} shows no tcp_proxy or http_connection_manager in the "
                   "given config")
    return None


def _istio_alpn(hcm: JSON) -> tuple[str, ...]:
    """Istio's ``istio.alpn`` HTTP filter replaces the cluster's ALPN per upstream protocol
    (istio/proxy source/extensions/filters/http/alpn); the seed's client speaks HTTP/1.1,
    so its HTTP11 entry applies: that is how a server chain matching
    ``istio-http/1.1`` is reached."""
    for f in hcm.get("http_filters", []) or []:
        if f.get("name") != "istio.alpn":
            continue
        conf = typed(f)
        # a TypedStruct's keys are kept as written: proto JSON (alpnOverride) or snake
        for entry in conf.get("alpn_override", conf.get("alpnOverride", [])) or []:
            proto = entry.get("upstream_protocol", entry.get("upstreamProtocol"))
            if proto == "HTTP11":
                return tuple(str(x) for x in entry.get("alpn_override",
                                                       entry.get("alpnOverride", [])) or [])
    return ()


def _domain_rank(domain: str, host: str) -> int | None:
    """Envoy's virtual host order: exact, then longest suffix *x, then prefix x*, then *."""
    if domain == host:
        return 4000
    if domain == "*":
        return 0
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return 3000 + len(domain)
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return 2000 + len(domain)
    return None


def _http_route(cfg: EnvoyConfig, hcm: JSON, ds: Downstream, t: SidecarTrace,
                pod: str) -> str | None:
    rc: Any = hcm.get("route_config")
    if rc is None:
        name = str((hcm.get("rds") or {}).get("route_config_name", ""))
        t.route_config = name
        rc = cfg.routes.get(name)
        if rc is None:
            if cfg.has_routes:
                fail(t, "no route", f"route configuration {name!r} is not in the config")
            else:
                t.missing.append(Missing(
                    f"route configuration {name!r}",
                    f"istioctl proxy-config route {pod} --name {name} -o json"))
            return None
    else:
        t.route_config = str(rc.get("name", "(inline)"))
    host = (ds.authority or hostport(ds.orig_dst_ip, ds.orig_dst_port)).lower()
    best: tuple[int, JSON] | None = None
    for vh in rc.get("virtual_hosts", []) or []:
        for d in vh.get("domains", []) or []:
            rank = _domain_rank(str(d).lower(), host)
            if rank is not None and (best is None or rank > best[0]):
                best = (rank, vh)
    if best is None:
        fail(t, "no route", f"no virtual host of {t.route_config} has a domain matching {host}")
        return None
    vh = best[1]
    t.virtual_host = str(vh.get("name"))
    for route in vh.get("routes", []) or []:
        m = route.get("match") or {}
        if not _path_matches(m, ds.path) or m.get("headers"):
            continue
        t.route = str(route.get("name", "(unnamed)"))
        action = route.get("route")
        if action is None:
            what = "direct_response" if "direct_response" in route else "redirect"
            fail(t, "no route", f"route {t.route} answers with a {what}, not an upstream")
            return None
        if action.get("cluster"):
            return str(action["cluster"])
        weighted = (action.get("weighted_clusters") or {}).get("clusters") or []
        if weighted:
            t.notes.append("weighted_clusters: " + ", ".join(
                f"{w.get('name')} ({w.get('weight')})" for w in weighted))
            return str(weighted[0].get("name"))
        fail(t, "no route", f"route {t.route} picks its cluster from a header "
              "(cluster_header), which the evidence does not give")
        return None
    fail(t, "no route", f"no route of virtual host {t.virtual_host} matches path {ds.path}")
    return None


def _path_matches(m: JSON, path: str) -> bool:
    if "prefix" in m:
        return path.startswith(str(m["prefix"]))
    if "path" in m:
        return path == str(m["path"])
    if "safe_regex" in m:
        return re.fullmatch(str(m["safe_regex"].get("regex", "")), path) is not None
    if "path_separated_prefix" in m:
        p = str(m["path_separated_prefix"])
        return path == p or path.startswith(p + "/")
    return False
