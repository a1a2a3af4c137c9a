"""istioctl proxy-config tables and JSON from a sidecar's config dump.

Pure rendering, as istioctl/pkg/writer/envoy/configdump/{listener,cluster,route,
endpoint}.go do it: the same columns, the same MATCH and DESTINATION descriptions, the
same sort orders and tabwriter spacing (padding 1 for listeners, 5 for the others). The
listener table is istioctl 1.11's verbose one (``ADDRESS PORT MATCH DESTINATION``), which
is what the seed shows; the endpoint table has 1.11's ``ENDPOINT STATUS OUTLIER CHECK
CLUSTER`` columns. ``-o json`` prints the selected resources as istioctl does (proto3 JSON
names, four-space indent).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from remora.diagnose.proxy_config.dump import JSON, ConfigDump, camel, inline_route_configs
from remora.diagnose.proxy_config.listeners import (
    cluster_of,
    describe_route_match,
    listener_table,
    listener_type,
    select_listeners,
)
from remora.diagnose.proxy_config.table import tabwrite
from remora.errors import RemoraError

__all__ = ["all_dump_output", "cluster_table", "describe_route_domains", "endpoint_rows",
           "endpoint_summary_table", "endpoint_table", "filtered_load_assignments",
           "full_summary", "listener_table", "listener_type", "output", "render",
           "route_configs", "route_table", "select_clusters", "select_listeners",
           "version_summary"]


def output(resources: list[JSON], fmt: str) -> str:
    """istioctl's -o json / -o yaml of a resource list."""
    body = [camel(r) for r in resources]
    if fmt == "yaml":
        return str(yaml.safe_dump(body, sort_keys=False))
    return json.dumps(body, indent=4) + "\n"


# -- clusters --------------------------------------------------------------------------

def parse_subset_key(name: str) -> tuple[str, str, str, int]:
    """(direction, subset, fqdn, port) of direction|port|subset|fqdn; else ("", "", name, 0)."""
    parts = name.split("|")
    if len(parts) > 3:
        try:
            port = int(parts[1])
        except ValueError:
            port = 0
        return parts[0], parts[2], parts[3], port
    return "", "", name, 0


def _cluster_sort_key(name: str) -> tuple[str, str, int, str]:
    direction, subset, fqdn, port = parse_subset_key(name)
    return fqdn, subset, port, direction


def _describe_management(metadata: Any) -> str:
    """The DestinationRule an Istio-made cluster came from (istio.config metadata)."""
    config = (metadata or {}).get("filter_metadata", {}).get("istio", {}).get("config", "")
    parts = str(config).strip("/").split("/")
    # /apis/networking.istio.io/v1alpha3/namespaces/NS/destination-rule/NAME -> NAME.NS
    if len(parts) >= 7:
        return f"{parts[6]}.{parts[4]}"
    return ""


def select_clusters(dump: ConfigDump, *, fqdn: str | None = None, port: int | None = None,
                    subset: str | None = None, direction: str | None = None) -> list[JSON]:
    out = []
    for c in dump.clusters:
        name = str(c.get("name", ""))
        if (fqdn and fqdn not in name) or (direction and direction not in name) \
                or (subset and subset not in name) or (port and f"|{port}|" not in name):
            continue
        out.append(c)
    return sorted(out, key=lambda c: _cluster_sort_key(str(c.get("name", ""))))


def cluster_table(dump: ConfigDump, include_type: bool = False, **filters: Any) -> str:
    """cluster.go PrintClusterSummary; ``include_type`` (`proxy-config all`): a leading
    NAME column of ``cluster/NAME``, and a cluster that is not direction|port|subset|fqdn
    shows ``cluster/NAME`` as its SERVICE FQDN too (istioctl renames it before printing)."""
    head = "SERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE\tDESTINATION RULE"
    lines = [("NAME\t" + head) if include_type else head]
    for c in select_clusters(dump, **filters):
        name = str(c.get("name", ""))
        ctype = str(c.get("type", "STATIC"))
        dr = _describe_management(c.get("metadata"))
        if len(name.split("|")) > 3:
            direction, subset, fqdn, port = parse_subset_key(name)
            row = f"{fqdn}\t{port}\t{subset or '-'}\t{direction}\t{ctype}\t{dr}"
            lines.append(f"cluster/{name}\t{row}" if include_type else row)
        elif include_type and name:
            lines.append(f"cluster/{name}\tcluster/{name}\t-\t-\t-\t{ctype}\t{dr}")
        else:
            # an unnamed cluster under include_type: five cells under seven headers, as
            # istioctl prints it
            lines.append(f"{name}\t-\t-\t-\t{ctype}\t{dr}")
    return tabwrite(lines, padding=5)


# -- endpoints -------------------------------------------------------------------------

def _endpoint_address(lb: JSON) -> str:
    addr = lb.get("endpoint", {}).get("address", {})
    if "socket_address" in addr:
        sa = addr["socket_address"]
        return f"{sa.get('address', '')}:{sa.get('port_value', 0)}"
    if "pipe" in addr:
        return str(addr["pipe"].get("path", ""))
    if "envoy_internal_address" in addr:  # clusters.go: envoy://LISTENER/ENDPOINT_ID
        ia = addr["envoy_internal_address"]
        return f"envoy://{ia.get('server_listener_name', '')}/{ia.get('endpoint_id', '')}"
    return "unknown"


def endpoint_rows(dump: ConfigDump, *, address: str | None = None, port: int | None = None,
                  cluster: str | None = None, status: str | None = None
                  ) -> list[tuple[str, str, str, str]]:
    """(ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER) rows, sorted like istioctl."""
    rows = []
    for cla in sorted(dump.endpoints,
                      key=lambda c: _cluster_sort_key(str(c.get("cluster_name", "")))):
        name = str(cla.get("cluster_name", ""))
        for group in cla.get("endpoints", []):
            for lb in group.get("lb_endpoints", []):
                addr = _endpoint_address(lb)
                # Envoy counts an endpoint without health status as healthy
                health = str(lb.get("health_status", "HEALTHY"))
                if health == "UNKNOWN":
                    health = "HEALTHY"
                if (address and addr.rsplit(":", 1)[0].lower() != address.lower()) \
                        or (port and not addr.endswith(f":{port}")) \
                        or (cluster and cluster.lower() != name.lower()) \
                        or (status and status.lower() != health.lower()):
                    continue
                rows.append((addr, health, "OK", name))
    return rows


def endpoint_addresses(lb: JSON) -> list[str]:
    """endpoint.go retrieveEndpointAddresses: the address and the additional addresses;
    an internal address as ``envoy://LISTENER/ENDPOINT_ID``."""
    ep = lb.get("endpoint", {})
    addrs = [ep.get("address", {})] + [a.get("address", {})
                                       for a in ep.get("additional_addresses", []) or []]
    out = []
    for addr in addrs:
        if "socket_address" in addr:
            sa = addr["socket_address"]
            out.append(f"{sa.get('address', '')}:{int(sa.get('port_value', 0) or 0)}")
        elif "pipe" in addr:
            out.append(str(addr["pipe"].get("path", "")))
        elif "envoy_internal_address" in addr:
            ia = addr["envoy_internal_address"]
            out.append(f"envoy://{ia.get('server_listener_name', '')}/"
                       f"{ia.get('endpoint_id', '')}")
        else:
            out.append("unknown")
    return out


def _locality(loc: Any) -> str:
    """util.LocalityToString: region[/zone[/subzone]]."""
    if not isinstance(loc, dict):
        return ""
    text = str(loc.get("region", ""))
    if loc.get("zone"):
        text += "/" + str(loc["zone"])
        if loc.get("sub_zone"):
            text += "/" + str(loc["sub_zone"])
    return text


def filtered_load_assignments(dump: ConfigDump, *, address: str | None = None,
                              port: int | None = None, cluster: str | None = None,
                              status: str | None = None) -> list[JSON]:
    """endpoint.go retrieveSortedEndpointsSlice: each ClusterLoadAssignment with only the
    endpoints the filter keeps, those with none dropped, sorted by the subset key (host,
    subset, port, direction). ``-o json`` prints these, so the port filter applies there
    too."""
    out = []
    for cla in dump.endpoints:
        name = str(cla.get("cluster_name", ""))
        kept = 0
        groups = []
        for group in cla.get("endpoints", []) or []:
            lbs = [lb for lb in group.get("lb_endpoints", []) or []
                   if _endpoint_kept(lb, name, address, port, cluster, status)]
            kept += len(lbs)
            groups.append({**group, "lb_endpoints": lbs})
        if kept:
            out.append({**cla, "endpoints": groups})

    def key(c: JSON) -> tuple[str, str, int, str]:
        direction, subset, host, p = parse_subset_key(str(c.get("cluster_name", "")))
        return host, subset, p, direction

    return sorted(out, key=key)


def _endpoint_kept(lb: JSON, cluster_name: str, address: str | None, port: int | None,
                   cluster: str | None, status: str | None) -> bool:
    if address and not any(a.lower() == address.lower() for a in endpoint_addresses(lb)):
        return False
    sa = lb.get("endpoint", {}).get("address", {}).get("socket_address", {})
    if port and int(sa.get("port_value", 0) or 0) != port:
        return False
    if cluster and cluster.lower() != cluster_name.lower():
        return False
    health = str(lb.get("health_status", "UNKNOWN"))
    return not status or status.lower() == health.lower()


def endpoint_summary_table(dump: ConfigDump, *, address: str | None = None,
                           port: int | None = None, cluster: str | None = None,
                           status: str | None = None, include_type: bool = False) -> str:
    """configdump/endpoint.go PrintEndpointsSummary: NAME STATUS LOCALITY CLUSTER from the
    dump's EndpointsConfigDump (what `istioctl proxy-config all` shows for endpoints, with
    ``include_type``: NAME is ``endpoint/ADDRESS``)."""
    lines = ["NAME\tSTATUS\tLOCALITY\tCLUSTER"]
    prefix = "endpoint/" if include_type else ""
    for cla in filtered_load_assignments(dump, address=address, port=port, cluster=cluster,
                                         status=status):
        for group in cla.get("endpoints", []) or []:
            for lb in group.get("lb_endpoints", []) or []:
                lines.append(f"{prefix}{','.join(endpoint_addresses(lb))}\t"
                             f"{lb.get('health_status', 'UNKNOWN')}\t"
                             f"{_locality(group.get('locality'))}\t{cla.get('cluster_name', '')}")
    return tabwrite(lines, padding=5)


def endpoint_table(dump: ConfigDump, **filters: Any) -> str:
    lines = ["ENDPOINT\tSTATUS\tOUTLIER CHECK\tCLUSTER"]
    lines += ["\t".join(row) for row in endpoint_rows(dump, **filters)]
    return tabwrite(lines, padding=5)


# -- routes ----------------------------------------------------------------------------

def route_configs(dump: ConfigDump, name: str | None = None) -> list[JSON]:
    """RDS route configurations, then the ones inline in listeners (remora's config has
    its routes inline; istioctl would show only RDS ones)."""
    seen = {json.dumps(r, sort_keys=True) for r in dump.routes}
    inline = [r for r in inline_route_configs(dump.listeners)
              if json.dumps(r, sort_keys=True) not in seen]

    if dump.route_section:
        # a proxy's /config_dump: its RoutesConfigDump alone (Envoy does not list the route
        # configs inline in LDS listeners, and istioctl shows none), dynamic then static
        # as listed, then istioctl's sort
        configs = _go_sort_routes(list(dump.routes))
    else:
        # the control plane's files (no dump): the listeners' inline route configs,
        # numeric names first, then by name and content

        def key(r: JSON) -> tuple[int, int, str, str]:
            n = str(r.get("name", ""))
            return ((0, int(n), "", "") if n.isdigit()
                    else (1, 0, n, json.dumps(r, sort_keys=True)))

        configs = sorted(list(dump.routes) + inline, key=key)
    return [r for r in configs if not name or r.get("name") == name]


def _go_sort_routes(configs: list[JSON]) -> list[JSON]:
    """route.go retrieveSortedRouteSlice: dynamic then static, then sort.Slice with "both
    names are numbers and i < j". Go's pdqsort insertion-sorts up to 12 elements, so a
    name that is not a number never moves and numbers move left only past smaller
    numbers; that is reproduced here (beyond 12, Go's order of non-numeric names may
    differ)."""
    out = list(configs)

    def less(a: JSON, b: JSON) -> bool:
        x, y = str(a.get("name", "")), str(b.get("name", ""))
        return x.lstrip("-").isdigit() and y.lstrip("-").isdigit() and int(x) < int(y)

    for i in range(1, len(out)):
        j = i
        while j > 0 and less(out[j], out[j - 1]):
            out[j], out[j - 1] = out[j - 1], out[j]
            j -= 1
    return out


def _unexpand(domains: list[str]) -> list[str]:
    unique = set(domains)
    drop = {h for h in domains
            if (h.removesuffix(".svc.cluster.local") in unique
                and h.removesuffix(".svc.cluster.local") != h)
            or (h.removesuffix(".svc") in unique and h.removesuffix(".svc") != h)}
    return [d for d in domains if d not in drop]


def describe_route_domains(domains: list[str]) -> str:
    """route.go describeRouteDomains: the names without ports, short forms, two at most."""
    if not domains:
        return ""
    if len(domains) == 1:
        return domains[0]
    without_port = [d for d in domains if ":" not in d
                    or (d.count(":") > 2 and d.endswith("]"))]
    without_port = _unexpand(without_port)
    if len(without_port) > 2:
        return f"{', '.join(without_port[:2])} + {len(without_port) - 2} more..."
    return ", ".join(without_port)


def route_table(dump: ConfigDump, name: str | None = None, include_type: bool = False,
                verbose: bool = True) -> str:
    """route.go PrintRouteSummary; ``include_type`` (`proxy-config all`): NAME is
    ``route/NAME``; not ``verbose``: NAME VIRTUAL HOSTS (the count)."""
    prefix = "route/" if include_type else ""
    if not verbose:
        counts = [f"{prefix}{rc.get('name', '')}\t{len(rc.get('virtual_hosts', []))}"
                  for rc in route_configs(dump, name)]
        return tabwrite(["NAME\tVIRTUAL HOSTS", *counts], padding=5)
    lines = ["NAME\tVHOST NAME\tDOMAINS\tMATCH\tVIRTUAL SERVICE"]
    for rc in route_configs(dump, name):
        rc = {**rc, "name": f"{prefix}{rc.get('name', '')}"}
        for vh in rc.get("virtual_hosts", []):
            domains = describe_route_domains(vh.get("domains", []))
            routes = vh.get("routes", [])
            for r in routes:
                if cluster_of(r.get("route")) == "PassthroughCluster":
                    continue
                lines.append(f"{rc.get('name', '')}\t{vh.get('name', '')}\t{domains}\t"
                             f"{describe_route_match(r.get('match', {}))}\t"
                             f"{_describe_management(r.get('metadata'))}")
            if not routes:
                lines.append(f"{rc.get('name', '')}\t{vh.get('name', '')}\t{domains}\t/*\t404")
    return tabwrite(lines, padding=5)


# -- proxy-config all -------------------------------------------------------------------

def version_summary(dump: ConfigDump) -> str:
    """configdump.go PrintBootstrapSummary: the Istio version and proxy SHA from the node
    metadata (ISTIO_VERSION, ISTIO_PROXY_SHA, the part after a colon), and Envoy's from
    node.user_agent_build_version (MAJOR.MINOR.PATCH, then -build.label, /revision.status,
    /build.type, /ssl.version from its metadata). The Envoy line is always there: a
    bootstrap without a build version gives 0.0.0, as istioctl's golden shows."""
    node = dump.bootstrap.get("node", {}) or {}
    md = node.get("metadata", {}) or {}
    lines = []
    if md.get("ISTIO_VERSION"):
        lines.append(f"Istio Version:\t{md['ISTIO_VERSION']}")
    sha = str(md.get("ISTIO_PROXY_SHA", "") or "")
    if ":" in sha:
        sha = sha.split(":")[1]
    if sha:
        lines.append(f"Istio Proxy Version:\t{sha}")
    build = node.get("user_agent_build_version", {}) or {}
    v = build.get("version", {}) or {}
    envoy = f"{int(v.get('major_number', 0))}.{int(v.get('minor_number', 0))}." \
            f"{int(v.get('patch', 0))}"
    bmd = build.get("metadata", {}) or {}
    for key, sep in (("build.label", "-"), ("revision.status", "/"), ("build.type", "/"),
                     ("ssl.version", "/")):
        if key in bmd:
            envoy += f"{sep}{bmd[key]}"
    lines.append(f"Envoy Version:\t{envoy}")
    # tabwriter.NewWriter(out, 0, 8, 1, ' ', 0)
    return tabwrite(lines, padding=1)


def full_summary(dump: ConfigDump, *, secrets: list[Any] | None = None,
                 port: int | None = None, fqdn: str | None = None,
                 address: str | None = None, name: str | None = None,
                 direction: str | None = None, subset: str | None = None,
                 listener_type: str | None = None, status: str | None = None,
                 verbose: bool = True, with_headers: bool = False) -> str:
    """configdump.go PrintFullSummary, what `istioctl proxy-config all` prints: the
    version lines, then the cluster, listener, route, secret and endpoint tables, each
    after a blank line, every row named TYPE/NAME (SetPrintConfigTypeInSummary(true)).
    As istioctl, --port filters clusters, listeners and endpoints, --address listeners and
    endpoints, --fqdn clusters (and --cluster, the same option here, endpoints).
    ``secrets``: the SecretItems to list (default: the dump's SecretsConfigDump). Where
    istioctl stops with "config dump has no configuration type ...SecretsConfigDump" this
    says there are none (a dump cut to some sections still shows the rest)."""
    from remora.diagnose.proxy_config import secret as pcs

    if secrets is None:
        secrets = pcs.items_from_config_dump(dump.raw)

    def head(title: str) -> str:
        return f"------ {title} ------\n\n" if with_headers else ""

    if secrets:
        secret_text = pcs.secret_table(secrets, include_type=True)
    else:
        # configdump.go PrintSecretSummary: no dynamic active or warming secret
        secret_text = "No active or warming secrets found.\n"
    parts = [
        head("BOOTSTRAP INFO") + version_summary(dump),
        head("CLUSTER INFO") + cluster_table(dump, include_type=True, fqdn=fqdn, port=port,
                                             direction=direction, subset=subset),
        head("LISTENER INFO") + listener_table(dump, port=port, address=address,
                                               type_=listener_type, verbose=verbose,
                                               include_type=True),
        head("ROUTE INFO") + route_table(dump, name, include_type=True, verbose=verbose),
        head("SECRET INFO") + secret_text,
        head("ENDPOINTS INFO") + endpoint_summary_table(dump, address=address, port=port,
                                                        cluster=fqdn, status=status,
                                                        include_type=True),
    ]
    return "\n".join(parts)


def all_dump_output(data: str, fmt: str) -> str:
    """`istioctl proxy-config all -o json|yaml`: the config dump itself, as read (the
    file's text, or the bytes the sidecar's /config_dump served), not re-encoded: istioctl
    prints it with fmt.Fprintln (so one more newline), -o yaml through sigs.k8s.io/yaml
    JSONToYAML (keys sorted, block style). A terminal paste's prompt and fence are left out,
    and anything that is not a whole config dump is refused, as the tables do."""
    from remora.diagnose.proxy_config.dump import dump_text, load_config_dump

    raw = load_config_dump(data)
    if fmt == "yaml":
        return str(yaml.safe_dump(raw, sort_keys=True, default_flow_style=False,
                                  allow_unicode=True)) + "\n"
    return dump_text(data) + "\n"


# -- one entry point for the CLI -------------------------------------------------------

def render(dump: ConfigDump, what: str, *, port: int | None = None, fqdn: str | None = None,
           address: str | None = None, name: str | None = None, fmt: str = "table",
           direction: str | None = None, subset: str | None = None,
           listener_type: str | None = None, status: str | None = None,
           verbose: bool = True, endpoint_source: str = "clusters",
           secrets: list[Any] | None = None, with_headers: bool = False) -> str:
    """``remora proxy-config WHAT`` output: WHAT is listener(s), cluster(s),
    endpoint(s), route(s) or all; fmt is table, json or yaml. Filters as istioctl's:
    listener --port/--address/--type, cluster --fqdn/--port/--direction/--subset,
    endpoint --address/--port/--cluster (fqdn)/--status, route --name. ``verbose``:
    istioctl's listener --verbose (false: ADDRESS PORT TYPE). ``endpoint_source``:
    "clusters" (the ENDPOINT STATUS OUTLIER CHECK CLUSTER table istioctl prints from a
    pod's /clusters) or "config_dump" (NAME STATUS LOCALITY CLUSTER from the dump's
    EndpointsConfigDump, as `istioctl proxy-config all` prints it; -o json then holds the
    filtered load assignments). For ``all``: ``secrets`` (the SecretItems to list, default
    the dump's) and ``with_headers`` (istioctl's --with-headers)."""
    kind = what.rstrip("s")
    if fmt not in ("table", "json", "yaml"):
        raise RemoraError(f"unknown output format {fmt!r}", "use -o json or -o yaml")
    if kind == "listener":
        if fmt == "table":
            return listener_table(dump, port=port, address=address, type_=listener_type,
                                  verbose=verbose)
        return output(select_listeners(dump, port=port, address=address, type_=listener_type),
                      fmt)
    if kind == "cluster":
        if fmt == "table":
            return cluster_table(dump, fqdn=fqdn, port=port, direction=direction, subset=subset)
        return output(select_clusters(dump, fqdn=fqdn, port=port, direction=direction,
                                      subset=subset), fmt)
    if kind == "endpoint" and endpoint_source == "config_dump":
        if fmt == "table":
            return endpoint_summary_table(dump, address=address, port=port, cluster=fqdn,
                                          status=status)
        return output(filtered_load_assignments(dump, address=address, port=port,
                                                cluster=fqdn, status=status), fmt)
    if kind == "endpoint":
        if fmt == "table":
            return endpoint_table(dump, address=address, port=port, cluster=fqdn, status=status)
        return output([c for c in dump.endpoints if not fqdn or c.get("cluster_name") == fqdn],
                      fmt)
    if kind == "route":
        if fmt == "table":
            return route_table(dump, name)
        return output(route_configs(dump, name), fmt)
    if kind == "all":
        if fmt != "table":
            # istioctl prints the whole config dump, in proto3 JSON names
            body = camel(dump.raw)
            if fmt == "yaml":
                return str(yaml.safe_dump(body, sort_keys=False))
            return json.dumps(body, indent=4) + "\n"
        return full_summary(dump, secrets=secrets, port=port, fqdn=fqdn, address=address,
                            name=name, direction=direction, subset=subset,
                            listener_type=listener_type, status=status, verbose=verbose,
                            with_headers=with_headers)
    raise RemoraError(f"unknown proxy-config type {what!r}",
                      "use listener, cluster, endpoint, route or all")
