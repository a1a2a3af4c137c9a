"""istio-iptables' flags and environment variables -> a validated, frozen CaptureConfig.

The flag table mirrors `bindCmdlineFlags` in Istio's tools/istio-iptables/pkg/cmd/root.go
(same long and short names, same defaults from tools/common/config/config.go
`DefaultConfig()`, same environment variables: `flag.BindEnv` upper-cases the flag name and
turns `-` into `_`; `-p` uses plain `flag.Bind` and has no variable). A flag on the command
line beats its variable; an "additional" variable (ISTIO_META_DNS_CAPTURE, INVALID_DROP,
ISTIO_DUAL_STACK) beats the plain one, because Istio applies it last.

Everything is checked here, before anything touches a namespace, so bad input fails with a
one-line RemoraError and nothing is half-applied.
https://github.com/istio/istio/blob/master/tools/istio-iptables/pkg/cmd/root.go
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from remora.capture import validate as v
from remora.errors import UsageError

Kind = Literal["str", "bool"]


@dataclass(frozen=True)
class Flag:
    field: str
    long: str
    short: str | None
    kind: Kind
    default: str | bool
    env: tuple[str, ...]  # checked in order; the first one set wins
    help: str


def _env(long: str) -> str:
    return long.upper().replace("-", "_")


def _f(field: str, long: str, short: str | None, kind: Kind, default: str | bool, help: str,
       env: tuple[str, ...] | None = None) -> Flag:
    return Flag(field, long, short, kind, default, (_env(long),) if env is None else env, help)


FLAGS: tuple[Flag, ...] = (
    _f("proxy_port", "envoy-port", "p", "str", "15001",
       "Envoy port to which all outbound TCP traffic is redirected.", env=()),
    _f("inbound_capture_port", "inbound-capture-port", "z", "str", "15006",
       "Port to which all inbound TCP traffic is redirected."),
    _f("inbound_tunnel_port", "inbound-tunnel-port", "e", "str", "15008",
       "Istio tunnel (HBONE) port for inbound TCP traffic; never captured."),
    _f("proxy_uid", "proxy-uid", "u", "str", "",
       "UID(s) whose traffic is not redirected (default: uid of $ENVOY_USER, else 1337)."),
    _f("proxy_gid", "proxy-gid", "g", "str", "",
       "GID(s) whose traffic is not redirected (default: the -u value)."),
    _f("inbound_interception_mode", "istio-inbound-interception-mode", "m", "str", "",
       "Inbound interception mode: REDIRECT (default) or TPROXY."),
    _f("inbound_ports_include", "istio-inbound-ports", "b", "str", "",
       "Inbound ports to redirect, or '*' for all; empty disables inbound capture."),
    _f("inbound_ports_exclude", "istio-local-exclude-ports", "d", "str", "",
       "Inbound ports excluded from redirection (only with -b '*')."),
    _f("exclude_interfaces", "istio-exclude-interfaces", "c", "str", "",
       "NICs whose inbound and outbound traffic is never captured."),
    _f("outbound_ip_ranges_include", "istio-service-cidr", "i", "str", "",
       "Outbound CIDRs to redirect, or '*' for all; empty disables outbound capture."),
    _f("outbound_ip_ranges_exclude", "istio-service-exclude-cidr", "x", "str", "",
       "Outbound CIDRs excluded from redirection."),
    _f("outbound_ports_include", "istio-outbound-ports", "q", "str", "",
       "Outbound ports always redirected."),
    _f("outbound_ports_exclude", "istio-local-outbound-ports-exclude", "o", "str", "",
       "Outbound ports never redirected (TCP and UDP)."),
    _f("reroute_virtual_interfaces", "kube-virt-interfaces", "k", "str", "",
       "Virtual interfaces whose inbound traffic is treated as outbound."),
    _f("inbound_tproxy_mark", "istio-inbound-tproxy-mark", "t", "str", "1337",
       "fwmark of TPROXY-captured packets."),
    _f("inbound_tproxy_route_table", "istio-inbound-tproxy-route-table", "r", "str", "133",
       "Policy-routing table for TPROXY-captured packets."),
    _f("dry_run", "dry-run", "n", "bool", False,
       "Print what would run, in Istio's golden form; change nothing."),
    _f("redirect_dns", "redirect-dns", None, "bool", False,
       "Capture DNS to the resolv.conf servers on port 15053.",
       env=("ISTIO_META_DNS_CAPTURE", "REDIRECT_DNS")),
    _f("capture_all_dns", "capture-all-dns", None, "bool", False,
       "With --redirect-dns, capture all DNS on port 53, not only to resolv.conf servers."),
    _f("drop_invalid", "drop-invalid", None, "bool", False,
       "Drop packets conntrack marks INVALID.", env=("INVALID_DROP", "DROP_INVALID")),
    _f("dual_stack", "dual-stack", None, "bool", False,
       "Install IPv6 rules too (::6 and ::1 in place of 127.0.0.6 and 127.0.0.1).",
       env=("ISTIO_DUAL_STACK", "DUAL_STACK")),
    _f("network_namespace", "network-namespace", None, "str", "",
       "Network namespace to act on: a name in /run/netns or a path."),
    _f("reconcile", "reconcile", None, "bool", False,
       "Repair drifted rules (clean up, then apply) instead of failing."),
    _f("cleanup_only", "cleanup-only", None, "bool", False,
       "Remove every ISTIO_* chain, jump and the TPROXY routing; add nothing."),
    _f("force_apply", "force-apply", None, "bool", False,
       "Apply even if the rules appear to be installed already."),
    _f("skip_rule_apply", "skip-rule-apply", None, "bool", False, "Do not apply anything."),
    _f("native_nftables", "native-nftables", None, "bool", False,
       "Use native nftables (inet tables istio-proxy-*) instead of iptables rules."),
    _f("force_iptables_binary", "force-iptables-binary", None, "str", "",
       "Which iptables to use: nft or legacy (default: plain iptables)."),
)

FLAG_BY_FIELD = {f.field: f for f in FLAGS}
# Accepted and ignored: the injector passes it to istio-iptables (Istio's log options).
IGNORED_VALUE_FLAGS = ("log_output_level", "log_as_json", "log_caller", "log_stacktrace_level")

# Env-only settings (constants.go: "deliberately have no equivalent command-line flags").
ENV_OWNER_GROUPS = "ISTIO_OUTBOUND_OWNER_GROUPS"
ENV_OWNER_GROUPS_EXCLUDE = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"
ENV_LOOPBACK_CIDR = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"
ENV_ENVOY_USER = "ENVOY_USER"
DEFAULT_PROXY_UID = "1337"


@dataclass(frozen=True)
class CaptureConfig:
    """One istio-iptables invocation, validated. Lists keep Istio's order.

    ``enable_ipv6`` and the DNS server lists are facts about the target namespace (its
    addresses, its resolv.conf); ``None`` means "not looked up yet" and apply fills them in.
    """

    proxy_port: str = "15001"
    inbound_capture_port: str = "15006"
    inbound_tunnel_port: str = "15008"
    proxy_uid: tuple[str, ...] = (DEFAULT_PROXY_UID,)
    proxy_gid: tuple[str, ...] = (DEFAULT_PROXY_UID,)
    inbound_interception_mode: str = "REDIRECT"
    inbound_ports_include: tuple[str, ...] = ()  # ("*",) = all ports
    inbound_ports_exclude: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    outbound_ip_ranges_include: tuple[str, ...] = ()  # ("*",) = all destinations
    outbound_ip_ranges_exclude: tuple[str, ...] = ()
    outbound_ports_include: tuple[str, ...] = ()
    outbound_ports_exclude: tuple[str, ...] = ()
    reroute_virtual_interfaces: tuple[str, ...] = ()
    inbound_tproxy_mark: str = "1337"
    inbound_tproxy_route_table: str = "133"
    owner_groups_include: str = "*"
    owner_groups_exclude: str = ""
    host_ipv4_loopback_cidr: str = "127.0.0.1/32"
    redirect_dns: bool = False
    capture_all_dns: bool = False
    drop_invalid: bool = False
    dual_stack: bool = False
    dry_run: bool = False
    network_namespace: str = ""
    reconcile: bool = False
    cleanup_only: bool = False
    force_apply: bool = False
    skip_rule_apply: bool = False
    native_nftables: bool = False
    force_iptables_binary: str = ""
    enable_ipv6: bool | None = None
    dns_servers_v4: tuple[str, ...] | None = None
    dns_servers_v6: tuple[str, ...] | None = None

    @property
    def tproxy(self) -> bool:
        return self.inbound_interception_mode == "TPROXY"


def _bool(name: str, raw: str) -> bool:
    # strconv.ParseBool, which pflag uses for bool flags and their variables.
    if raw in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if raw in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise UsageError(f"{name}={raw!r} is not a boolean", f"set {name} to true or false")


def _lookup(flag: Flag, given: Mapping[str, str | bool | None], env: Mapping[str, str]
            ) -> str | bool:
    value = given.get(flag.field)
    if value is not None:
        return value
    for name in flag.env:
        if name in env:
            return _bool(name, env[name]) if flag.kind == "bool" else env[name]
    return flag.default


def _default_uid(env: Mapping[str, str]) -> str:
    # FillConfigFromEnvironment: the uid of $ENVOY_USER (default istio-proxy), else 1337.
    try:
        return str(pwd.getpwnam(env.get(ENV_ENVOY_USER, "istio-proxy")).pw_uid)
    except KeyError:
        return DEFAULT_PROXY_UID


def build_config(given: Mapping[str, str | bool | None],
                 env: Mapping[str, str] | None = None) -> CaptureConfig:
    """Resolve flag values (field name -> value, None = not given) against ENV and validate."""
    env = {} if env is None else env
    unknown = set(given) - set(FLAG_BY_FIELD)
    if unknown:
        raise UsageError(f"unknown capture setting(s): {', '.join(sorted(unknown))}",
                         "see `remora capture --help`")
    raw = {f.field: _lookup(f, given, env) for f in FLAGS}
    s = {k: val for k, val in raw.items() if isinstance(val, str)}
    b = {k: val for k, val in raw.items() if isinstance(val, bool)}

    mode = s["inbound_interception_mode"] or "REDIRECT"
    if mode not in ("REDIRECT", "TPROXY"):
        raise UsageError(f"unknown interception mode -m {mode!r}",
                         "use -m REDIRECT or -m TPROXY (upper case)")
    uid = s["proxy_uid"] or _default_uid(env)
    gid = s["proxy_gid"] or uid
    binary = s["force_iptables_binary"]
    if binary not in ("", "nft", "legacy"):
        raise UsageError(f"--force-iptables-binary {binary!r} is not nft or legacy",
                         "use --force-iptables-binary nft, legacy, or leave it out")
    include = env.get(ENV_OWNER_GROUPS, "*")
    exclude = env.get(ENV_OWNER_GROUPS_EXCLUDE, "")
    v.owner_groups(include, exclude)
    loopback = env.get(ENV_LOOPBACK_CIDR, "127.0.0.1/32")
    v.loopback_cidr(loopback, ENV_LOOPBACK_CIDR)

    config = CaptureConfig(
        proxy_port=v.port(s["proxy_port"], "-p/--envoy-port"),
        inbound_capture_port=v.port(s["inbound_capture_port"], "-z/--inbound-capture-port"),
        inbound_tunnel_port=v.port(s["inbound_tunnel_port"], "-e/--inbound-tunnel-port"),
        proxy_uid=v.ids(uid, "-u/--proxy-uid", "uid"),
        proxy_gid=v.ids(gid, "-g/--proxy-gid", "gid"),
        inbound_interception_mode=mode,
        inbound_ports_include=v.ports(s["inbound_ports_include"], "-b/--istio-inbound-ports",
                                      wildcard=True),
        inbound_ports_exclude=v.ports(s["inbound_ports_exclude"],
                                      "-d/--istio-local-exclude-ports"),
        exclude_interfaces=v.interfaces(s["exclude_interfaces"],
                                        "-c/--istio-exclude-interfaces"),
        outbound_ip_ranges_include=v.cidrs(s["outbound_ip_ranges_include"],
                                           "-i/--istio-service-cidr", wildcard=True),
        outbound_ip_ranges_exclude=v.cidrs(s["outbound_ip_ranges_exclude"],
                                           "-x/--istio-service-exclude-cidr", wildcard=False),
        outbound_ports_include=v.ports(s["outbound_ports_include"], "-q/--istio-outbound-ports"),
        outbound_ports_exclude=v.ports(s["outbound_ports_exclude"],
                                       "-o/--istio-local-outbound-ports-exclude"),
        reroute_virtual_interfaces=v.interfaces(s["reroute_virtual_interfaces"],
                                                "-k/--kube-virt-interfaces"),
        inbound_tproxy_mark=v.mark(s["inbound_tproxy_mark"]),
        inbound_tproxy_route_table=v.route_table(s["inbound_tproxy_route_table"]),
        owner_groups_include=include,
        owner_groups_exclude=exclude,
        host_ipv4_loopback_cidr=loopback,
        network_namespace=s["network_namespace"],
        force_iptables_binary=binary,
        redirect_dns=b["redirect_dns"],
        capture_all_dns=b["capture_all_dns"],
        drop_invalid=b["drop_invalid"],
        dual_stack=b["dual_stack"],
        dry_run=b["dry_run"],
        reconcile=b["reconcile"],
        cleanup_only=b["cleanup_only"],
        force_apply=b["force_apply"],
        skip_rule_apply=b["skip_rule_apply"],
        native_nftables=b["native_nftables"],
    )
    return config


def with_overrides(config: CaptureConfig, **changes: object) -> CaptureConfig:
    """dataclasses.replace with a check that every name is a field (tests, node runtime)."""
    names = {f.name for f in fields(CaptureConfig)}
    bad = set(changes) - names
    if bad:
        raise UsageError(f"unknown capture setting(s): {', '.join(sorted(bad))}")
    from dataclasses import replace
    return replace(config, **changes)  # type: ignore[arg-type]
