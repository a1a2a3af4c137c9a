"""`remora node`: run and inspect the node runtime (namespaces as pods, the node daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from remora.node import naming
from remora.node.config import NodeConfig, default_state_dir


def _state_dir(value: str | None) -> Path:
    return Path(value) if value else default_state_dir()


@click.group()
def node() -> None:
    """The node runtime: node/pod network namespaces, processes, DNS, kube-proxy rules."""


@node.command()
@click.option("--state-dir", help="where the store, logs and socket live "
              "(default $REMORA_STATE_DIR or /var/lib/remora)")
@click.option("--prefix", default=naming.DEFAULT_PREFIX, show_default=True,
              help="prefix of every namespace the lab creates")
@click.option("--nodes", default=1, show_default=True, type=int, help="number of nodes")
@click.option("--pod-cidr", default="10.20.0.0/16", show_default=True)
@click.option("--service-cidr", default="172.16.0.0/16", show_default=True)
@click.option("--pod-ip-start", default=2, show_default=True, type=int,
              help="first host offset handed out in each node's /24")
@click.option("--pod-setup", envvar="REMORA_POD_SETUP", default=None,
              help="MODULE:ATTR of a remora.node.hooks.PodSetup (sidecar injection etc.)")
@click.option("--ip-family", type=click.Choice(["ipv4", "ipv6", "dual"]), default="ipv4",
              show_default=True, help="pod and service addresses: IPv4, IPv6 or both")
def daemon(state_dir: str | None, prefix: str, nodes: int, pod_cidr: str, service_cidr: str,
           pod_ip_start: int, pod_setup: str | None, ip_family: str) -> None:
    """Run the node daemon in the foreground (`remora up` starts it in the background)."""
    from remora.node import daemon as node_daemon

    config = NodeConfig(state_dir=_state_dir(state_dir), prefix=naming.check_prefix(prefix),
                        nodes=nodes, pod_cidr=pod_cidr, service_cidr=service_cidr,
                        pod_ip_start=pod_ip_start, ip_family=ip_family)
    node_daemon.run(config, pod_setup)


@node.command()
@click.option("--state-dir")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def status(state_dir: str | None, output: str) -> None:
    """Show the daemon, its nodes and pods."""
    from remora.node.client import NodeClient

    client = NodeClient(_state_dir(state_dir))
    info = client.ping()
    nodes = client.nodes()
    pods = client.get("Pod")
    if output == "json":
        click.echo(json.dumps({"daemon": info, "nodes": nodes, "pods": pods}, indent=2))
        return
    click.echo(f"daemon pid {info['pid']}, state dir {info['state_dir']}")
    for n in nodes:
        click.echo(f"node {n['name']}  {n['subnet']}  gateway {n['gateway']}  "
                   f"node IP {n['nodeIP']}")
        if n.get("subnet6"):
            click.echo(f"     {n['name']}  {n['subnet6']}  gateway {n['gateway6']}  "
                       f"node IP {n['nodeIP6']}")
    for p in pods:
        r = p["remora"]
        click.echo(f"pod {p['metadata']['namespace']}/{p['metadata']['name']}  {r['ready']}  "
                   f"{r['status']}  restarts {r['restarts']}  {p['status']['podIP']}  "
                   f"netns {r['netns']}")


@node.command()
@click.option("--state-dir")
def down(state_dir: str | None) -> None:
    """Remove every namespace, link, rule, process and file of the lab."""
    from remora.node import teardown
    from remora.node.client import NodeClient, refuse_survivors

    path = _state_dir(state_dir)
    client = NodeClient(path)
    removed = refuse_survivors(path, client.down() if client.alive() else teardown.down(path))
    click.echo(f"removed {len(removed)} objects")
