"""Per-pod /etc files: /etc/netns/<pod netns>/{resolv.conf,hosts}.

`ip netns exec NAME` bind-mounts every file of /etc/netns/NAME over its /etc counterpart
in the process's private mount namespace (ip-netns(8)), which is how a pod's processes
get Kubernetes' DNS settings without touching the host's /etc/resolv.conf. The content
follows kubelet's ClusterFirst policy: the cluster DNS address, the namespace's search
list, ndots:5.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

ETC_NETNS = Path("/etc/netns")


def resolv_conf(namespace: str, dns_ip: str | list[str], domain: str = "cluster.local") -> str:
    # kubelet writes one nameserver line per --cluster-dns address (an IPv6-only pod
    # reaches only the IPv6 one)
    servers = [dns_ip] if isinstance(dns_ip, str) else dns_ip
    return (f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
            + "".join(f"nameserver {ip}\n" for ip in servers)
            + "options ndots:5\n")


def hosts(pod_ip: str | list[str], hostname: str) -> str:
    # kubelet's managed /etc/hosts: a line per pod IP (status.podIPs)
    ips = [pod_ip] if isinstance(pod_ip, str) else pod_ip
    return ("# Kubernetes-managed hosts file (remora).\n"
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{ip}\t{hostname}\n" for ip in ips))


def write(netns_name: str, namespace: str, dns_ip: str | list[str], pod_ip: str | list[str],
          hostname: str, domain: str = "cluster.local", root: Path = ETC_NETNS) -> Path:
    folder = root / netns_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "resolv.conf").write_text(resolv_conf(namespace, dns_ip, domain))
    (folder / "hosts").write_text(hosts(pod_ip, hostname))
    return folder


def remove(netns_name: str, root: Path = ETC_NETNS) -> None:
    shutil.rmtree(root / netns_name, ignore_errors=True)
    # Leave /etc/netns itself only if something else lives there.
    with contextlib.suppress(OSError):
        root.rmdir()
