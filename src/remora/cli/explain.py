"""`remora explain source-ip`: where a client's IP is lost, why, and how to keep it.

Offline it reads what a user collects from a real cluster (docs/explain.md); the live form
(`--from POD -n NS --to SERVICE[:PORT]|POD[:PORT]`) collects the same evidence from the
running remora lab and sends a probe request (remora.diagnose.evidence.lab).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import click

from remora.diagnose.evidence.sources import Collected, FileSource, KubeSource, LabSource
from remora.diagnose.facts import is_ip, split_hostport
from remora.diagnose.source_ip.evidence import PodEvidence
from remora.errors import RemoraError, UsageError

if TYPE_CHECKING:
    from remora.diagnose.source_ip.explain import Report

_SIDE_HELP = "repeatable; prefix client= or server= (default server)"


@click.group("explain")
def explain() -> None:
    """Explain a connection's path through capture rules and sidecar config."""


def _pod(pod: PodEvidence, ref: str | None, ip: str | None, namespace: str | None) -> None:
    if ref:
        name, _, ns = ref.partition(".")
        pod.pod, pod.namespace = name, ns or namespace
    elif namespace:
        pod.namespace = namespace
    if ip:
        pod.ip = ip


def _write_diagram(path: Path, svg: str) -> str:
    if path.suffix.lower() != ".png":
        path.write_text(svg)
        return f"diagram written to {path}"
    tmp = path.with_suffix(".svg")
    tmp.write_text(svg)
    converters = [["rsvg-convert", "-o", str(path), str(tmp)],
                  ["magick", str(tmp), str(path)],
                  ["inkscape", str(tmp), "--export-filename", str(path)]]
    for argv in converters:
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run(argv, capture_output=True, check=False)
        if done.returncode == 0 and path.exists():
            return f"diagram written to {path} (and {tmp})"
    raise RemoraError(f"cannot make {path}: PNG needs rsvg-convert (librsvg) or ImageMagick, "
                      f"and none is installed; the SVG was written to {tmp}",
                      "open the .svg, or install librsvg2-bin and run again")


@explain.command("source-ip")
@click.option("--istio-dump", type=click.Path(path_type=Path), metavar="DIR",
              help="directory with client/ and server/ evidence (see docs/explain.md)")
@click.option("--config-dump", multiple=True, metavar="[SIDE=]FILE",
              help="istioctl proxy-config all -o json, /config_dump, or listener/cluster "
                   f"JSON; {_SIDE_HELP}")
@click.option("--iptables", multiple=True, metavar="[SIDE=]FILE",
              help="iptables-save or ip6tables-save output, `iptables -t nat|mangle -L -v` "
                   f"(ip6tables too), or `nft list ruleset`; {_SIDE_HELP}")
@click.option("--access-log", multiple=True, metavar="[SIDE=]FILE",
              help=f"istio-proxy access log (text or JSON); {_SIDE_HELP}")
@click.option("--ip-rules", multiple=True, metavar="[SIDE=]FILE",
              help="`ip rule show; ip route show table 133` in the pod (TPROXY policy "
                   f"routing); {_SIDE_HELP}")
@click.option("--sidecar-uid", multiple=True, metavar="[SIDE=]UID",
              help="uid the sidecar (istio-proxy) runs as [default: Istio's, 1337; 0 in "
                   f"TPROXY mode]; {_SIDE_HELP}")
@click.option("--sidecar-gid", multiple=True, metavar="[SIDE=]GID",
              help=f"gid the sidecar runs as [default: 1337]; {_SIDE_HELP}")
@click.option("--istio-version", metavar="X.Y",
              help="the sidecars' Istio version (else from the evidence): before 1.10 a "
                   "declared port's app is dialled from 127.0.0.1, from 1.10 from 127.0.0.6")
@click.option("--client-ip", metavar="IP", help="client pod IP (else from the evidence)")
@click.option("--server-ip", metavar="IP", help="server pod IP (else from the evidence)")
@click.option("--client-pod", metavar="POD[.NS]", help="client pod name, for the commands shown")
@click.option("--server-pod", metavar="POD[.NS]",
              help="server pod name, for the fix and the commands shown")
@click.option("--to", "to", metavar="HOST[:PORT]",
              help="what the client connects to: service name or IP, and port (live: "
                   "SERVICE[.NS][:PORT] or POD[.NS][:PORT])")
@click.option("--from", "from_", metavar="POD",
              help="live: the client pod in the remora lab (POD, POD.NS or deploy/NAME)")
@click.option("-n", "--namespace", metavar="NS", help="namespace of the pods")
@click.option("--family", type=click.Choice(["ipv4", "ipv6"]), default=None,
              help="live: reach a named dual-stack service or pod over this family (its "
                   "ClusterIP or pod IP of it); an address in --to decides by itself")
@click.option("--path", "http_path", default="/", show_default=True,
              help="HTTP path, for route matching (live: the probe request's path)")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--diagram", type=click.Path(path_type=Path), metavar="FILE.svg|FILE.png",
              help="also draw the path, marking where the source address changes")
@click.option("--compare", is_flag=True,
              help="table: what the app sees under REDIRECT/TPROXY and each header option")
@click.option("--state-dir", envvar="REMORA_STATE_DIR", default=None, metavar="DIR",
              help="live: the lab's state directory [default: $REMORA_STATE_DIR, else "
                   "/var/lib/remora]")
@click.option("--kube", is_flag=True,
              help="with --from/--to: collect the evidence from a cluster through the "
                   "Kubernetes API (the kubeconfig's current context; the lab too)")
@click.option("--context", metavar="NAME", help="--kube: the kubeconfig context to use")
@click.option("--kubeconfig", metavar="FILE", envvar="KUBECONFIG",
              help="--kube: the kubeconfig [default: $KUBECONFIG or ~/.kube/config]")
def source_ip(istio_dump: Path | None, config_dump: tuple[str, ...], iptables: tuple[str, ...],
              access_log: tuple[str, ...], ip_rules: tuple[str, ...],
              sidecar_uid: tuple[str, ...], sidecar_gid: tuple[str, ...],
              istio_version: str | None, client_ip: str | None, server_ip: str | None,
              client_pod: str | None, server_pod: str | None, to: str | None,
              from_: str | None, namespace: str | None, family: str | None,
              http_path: str, output: str,
              diagram: Path | None, compare: bool, state_dir: str | None, kube: bool,
              context: str | None, kubeconfig: str | None) -> None:
    """Which address the server's app sees for a client, step by step, and the fix."""
    to_port = None if not to or is_ip(to) else split_hostport(to)[1]
    if to_port is not None and not 1 <= to_port <= 65535:
        # a TCP port is 16 bits and 0 is not a destination one can connect to
        raise UsageError(f"--to {to}: port {to_port} is outside 1-65535",
                         "use --to HOST:PORT with the service or pod port, e.g. "
                         "--to simple-server-svc.demo-to:18080")
    if (kube or context) and not from_:
        raise UsageError("--kube needs --from POD and --to SERVICE[:PORT]",
                         "e.g. --kube --from deploy/simple-client -n demo-from "
                         "--to simple-server-svc.demo-to:18080")
    if family and (not from_ or kube or context):
        raise UsageError("--family is for the live form (--from ... --to SERVICE in the lab)",
                         "offline, the addresses in the evidence or --to decide the family")
    if from_:
        if istio_dump or config_dump or iptables or access_log or ip_rules or sidecar_uid \
                or sidecar_gid:
            raise UsageError("--from (live, from the lab) and evidence files (offline) do not "
                             "mix", "drop --from to read the files, or drop the files")
        if not to:
            raise UsageError("--from needs --to: the service or pod the client connects to",
                             "e.g. --from deploy/simple-client -n demo-from "
                             "--to simple-server-svc.demo-to:18080")
        if kube or context:
            got: Collected = KubeSource(from_, namespace or "default", to, http_path,
                                        kubeconfig, context).collect()
        else:
            from remora.lab import session

            got = LabSource(session.state_dir(state_dir), from_, namespace or "default", to,
                            http_path, {"ipv4": 4, "ipv6": 6}.get(family or "")).collect()
        _print(got, got.explain(), output, diagram, compare)
        return
    if not (istio_dump or config_dump or iptables or access_log):
        # the live form first: in the lab it collects everything itself
        raise UsageError("no evidence given",
                         "in the lab: --from POD -n NS --to SERVICE[:PORT] (e.g. --from "
                         "deploy/simple-client -n demo-from --to simple-server-svc.demo-to:18080"
                         "); on a cluster add --kube; offline: --istio-dump DIR, or "
                         "--config-dump / --iptables / --access-log files (see `remora "
                         "explain source-ip --help`)")
    got = FileSource(istio_dump, list(config_dump), list(iptables), list(access_log),
                     list(ip_rules), list(sidecar_uid), list(sidecar_gid)).collect()
    ev = got.evidence
    _pod(ev.client, client_pod, client_ip, namespace)
    _pod(ev.server, server_pod, server_ip, namespace)
    if to:
        host, port = (to, None) if is_ip(to) else split_hostport(to)  # a bare IPv6 address
        if port is None and not is_ip(host) and ":" in to:
            raise UsageError(f"--to {to}: the port is not a number", "use --to HOST:PORT")
        ev.target.host, ev.target.port = host or None, port
    ev.target.path = http_path
    if istio_version:
        from remora.diagnose.source_ip.istio_version import parse_option

        if parse_option(istio_version) is None:
            raise UsageError(f"--istio-version {istio_version}: expected MAJOR.MINOR",
                             "e.g. --istio-version 1.9")
        ev.istio_version = istio_version
    _print(got, got.explain(), output, diagram, compare)


def _print(got: Collected, report: Report, output: str, diagram: Path | None,
           compare: bool) -> None:
    """The same output from every source; the lab adds the probe, its pods and counters,
    a cluster the steps it collected and could not."""
    import json

    from remora.diagnose.source_ip.compare import compare_table, render_compare
    from remora.diagnose.source_ip.render import render_json, render_text, to_json
    from remora.diagnose.source_ip.svg import render_svg

    extra = got.json_extra()
    if compare:
        table = compare_table(got.evidence, report)
        if output == "json":
            click.echo(json.dumps([row.__dict__ for row in table], indent=2))
        else:
            if header := got.header_lines():
                click.echo("\n".join(header) + "\n")
            click.echo(render_compare(table), nl=False)
    elif output == "json":
        if extra is None:
            click.echo(render_json(report), nl=False)
        else:
            click.echo(json.dumps({**to_json(report), extra[0]: extra[1]}, indent=2))
    else:
        click.echo(got.text(render_text(report)), nl=False)
    if diagram is not None:
        click.echo(_write_diagram(diagram, render_svg(report)), err=True)
