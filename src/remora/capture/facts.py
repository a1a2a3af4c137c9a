"""What istio-iptables looks up in the pod before building rules: IPv6 and DNS servers.

- IPv6 (tools/common/config/config.go getLocalIP): the first interface address that is not
  loopback or link-local decides; if it is IPv6, IPv6 rules are installed too. remora also
  turns IPv6 on for --dual-stack (the issue's rule: "when the pod has an IPv6 address or
  --dual-stack"); Istio itself additionally requires some IPv6 address to exist then.
- DNS servers: the `nameserver` lines of the pod's resolv.conf, only with --redirect-dns
  and without --capture-all-dns. For a named namespace that is /etc/netns/NAME/resolv.conf
  when it exists (what `ip netns exec` bind-mounts), else /etc/resolv.conf.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pyroute2 import IPRoute

from remora import netns
from remora.capture.config import CaptureConfig, with_overrides


def first_address_is_ipv6(path: Path | None) -> bool:
    with netns.entered(path):
        ipr = IPRoute()
    try:
        # One AF_UNSPEC dump, as Go's net.InterfaceAddrs does: IPv4 addresses come first.
        addrs = [a.get("address") for a in ipr.get_addr()]
    finally:
        ipr.close()
    for text in addrs:
        if not text:
            continue
        addr = ipaddress.ip_address(text)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.is_loopback or addr.is_link_local:
            continue
        return addr.version == 6
    return False


def resolv_conf(path: Path | None) -> Path:
    if path is not None and path.parent == netns.NETNS_RUN_DIR:
        per_ns = Path("/etc/netns") / path.name / "resolv.conf"
        if per_ns.exists():
            return per_ns
    return Path("/etc/resolv.conf")


def dns_servers(conf: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4, IPv6) nameservers, as Go's netutil.IPsSplitV4V6 prints them."""
    v4: list[str] = []
    v6: list[str] = []
    try:
        text = conf.read_text()
    except OSError:
        return (), ()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            (v4 if addr.version == 4 else v6).append(str(addr))
    return tuple(v4), tuple(v6)


def resolve(config: CaptureConfig, path: Path | None) -> CaptureConfig:
    """CONFIG with enable_ipv6 and the DNS servers filled in from the namespace at PATH."""
    changes: dict[str, object] = {}
    if config.enable_ipv6 is None:
        changes["enable_ipv6"] = config.dual_stack or first_address_is_ipv6(path)
    if config.dns_servers_v4 is None or config.dns_servers_v6 is None:
        if config.redirect_dns and not config.capture_all_dns:
            v4, v6 = dns_servers(resolv_conf(path))
        else:
            v4, v6 = (), ()
        changes["dns_servers_v4"] = v4 if config.dns_servers_v4 is None else config.dns_servers_v4
        changes["dns_servers_v6"] = v6 if config.dns_servers_v6 is None else config.dns_servers_v6
    return with_overrides(config, **changes) if changes else config

