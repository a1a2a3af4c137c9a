"""`remora proxy-config listener|cluster|endpoint|route|secret|log|all POD -n NS`, or
offline `... --file DUMP` (as `istioctl proxy-config --file`):
istioctl's proxy-config, from the sidecar's own /config_dump (read through the pod's
network namespace) rendered by remora.diagnose.proxy_config.render with istioctl's tables and
JSON. `secret` lists the SDS certificates (remora.diagnose.proxy_config.secret): from the
dump's SecretsConfigDump (Envoy), else from the SDS files the lab wrote into the pod's
config directory (`remora proxy` has no SecretsConfigDump)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from remora.errors import RemoraError
from remora.lab import admin, session
from remora.lab.pods import resolve_pod, split_dotted

TYPES = ("listener", "listeners", "cluster", "clusters", "endpoint", "endpoints", "route",
         "routes", "secret", "secrets", "log", "all")


@click.command("proxy-config", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("what", type=click.Choice(TYPES))
@click.argument("pod", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--file", "dump_file", type=click.Path(path_type=Path), default=None,
              metavar="DUMP",
              help="offline: read an Envoy /config_dump (or `istioctl proxy-config all -o "
                   "json`) instead of a pod, as istioctl proxy-config --file")
@click.option("--port", type=int, default=None, help="only this port")
@click.option("--fqdn", "--cluster", "fqdn", default=None,
              help="only this cluster, e.g. \"inbound|18080||\"")
@click.option("--address", default=None, help="only this listener address / endpoint")
@click.option("--name", default=None, help="only this route config")
@click.option("--type", "listener_type", default=None, help="listener: only HTTP, TCP, ...")
@click.option("--status", default=None, help="endpoint: only this health status")
@click.option("--verbose", type=click.BOOL, default=True, show_default=True,
              help="listener: false for istioctl's ADDRESS PORT TYPE table")
@click.option("-o", "--output", type=click.Choice(["short", "json", "yaml"]), default="short")
@click.option("--with-headers", is_flag=True,
              help="all: a ------ TITLE ------ line above each section, as istioctl's")
@click.option("--level", default=None, help="log: set the sidecar's log level")
@click.option("--state-dir", envvar="REMORA_STATE_DIR", default=None,
              help="the lab's state directory [default: $REMORA_STATE_DIR, else /var/lib/remora]")
@click.option("--kube", is_flag=True,
              help="read the pod's config dump through the Kubernetes API (pods/exec in "
                   "istio-proxy) of the kubeconfig's cluster, the lab's or a real one")
@click.option("--context", metavar="NAME", help="--kube: the kubeconfig context to use")
@click.option("--kubeconfig", metavar="FILE", envvar="KUBECONFIG",
              help="--kube: the kubeconfig [default: $KUBECONFIG or ~/.kube/config]")
def proxy_config(what: str, pod: str | None, namespace: str, dump_file: Path | None,
                 port: int | None, fqdn: str | None, address: str | None, name: str | None,
                 listener_type: str | None, status: str | None, verbose: bool, output: str,
                 with_headers: bool, level: str | None, state_dir: str | None, kube: bool,
                 context: str | None, kubeconfig: str | None) -> None:
    """Show a sidecar's Envoy config as istioctl proxy-config does."""
    from remora.diagnose.proxy_config.dump import parse_config_dump
    from remora.diagnose.proxy_config.render import render

    fmt = "table" if output == "short" else output
    if dump_file is not None:
        if pod:
            raise RemoraError("give a pod or --file, not both",
                              f"drop {pod!r} to read {dump_file}, or drop --file")
        click.echo(_offline(what, dump_file, fmt, port=port, fqdn=fqdn, address=address,
                            name=name, listener_type=listener_type, status=status,
                            verbose=verbose, with_headers=with_headers), nl=False)
        return
    if not pod:
        raise RemoraError(f"proxy-config {what} needs a pod name or --file DUMP",
                          f"e.g. remora proxy-config {what} POD -n NS, or --file "
                          "config_dump.json")
    if kube or context:
        click.echo(_kube(what, pod, namespace, kubeconfig, context, fmt, port=port,
                         fqdn=fqdn, address=address, name=name, listener_type=listener_type,
                         status=status, verbose=verbose, with_headers=with_headers),
                   nl=False)
        return
    client = session.connect(session.state_dir(state_dir))
    pod, namespace = split_dotted(pod, namespace)
    pod = resolve_pod(client, namespace, pod)
    found = [p for p in client.get("Pod", namespace) if p["metadata"]["name"] == pod]
    if not found:
        raise RemoraError(f"pod {pod!r} not found in namespace {namespace!r}",
                          f"list pods with `remora get pods -n {namespace}`")
    if not any(c["name"] == "istio-proxy" for c in found[0]["spec"].get("containers") or []):
        raise RemoraError(f"pod {namespace}/{pod} has no sidecar (istio-proxy)",
                          "label its namespace istio-injection=enabled and re-create the pod")
    netns = found[0]["remora"]["netns"]
    where = f"{namespace}/{pod}"
    if what == "log":
        target = f"/logging?level={level}" if level else "/logging"
        body = admin.request(netns, "POST", target, where=where)
        click.echo(body.decode(errors="replace"), nl=False)
        return
    if what in ("secret", "secrets"):
        click.echo(_secrets(netns, where, _config_dir(session.state_dir(state_dir), found[0]),
                            output), nl=False)
        return
    body = admin.request(netns, "GET", "/config_dump?include_eds", where=where)
    if what == "all" and fmt != "table":
        from remora.diagnose.proxy_config.render import all_dump_output

        click.echo(all_dump_output(body.decode(errors="replace"), fmt), nl=False)
        return
    dump = parse_config_dump(body)
    secrets = None
    if what == "all":
        # the secrets `proxy-config secret` lists for this pod (remora proxy's own dump
        # has an empty SecretsConfigDump; the lab's SDS files are what it serves)
        from remora.diagnose.proxy_config import secret as pcs

        secrets = pcs.secret_items(dump.raw,
                                   _config_dir(session.state_dir(state_dir), found[0]))
    text = render(dump, what, port=port, fqdn=fqdn, address=address, name=name, fmt=fmt,
                  listener_type=listener_type, status=status, verbose=verbose,
                  secrets=secrets, with_headers=with_headers)
    click.echo(text if text.endswith("\n") else text + "\n", nl=False)


def _kube(what: str, pod: str, namespace: str, kubeconfig: str | None, context: str | None,
          fmt: str, **filters: Any) -> str:
    """`--kube`: the sidecar's /config_dump?include_eds through the Kubernetes API (as
    remora.diagnose.evidence.kube collects it for explain), rendered as the lab form
    renders its own; secrets from the dump's SecretsConfigDump, as --file."""
    from remora.diagnose.evidence import kube
    from remora.diagnose.evidence.kube_client import KubeCluster

    if what == "log":
        raise RemoraError("proxy-config log is not served with --kube",
                          f"kubectl exec {pod} -n {namespace} -c istio-proxy -- pilot-agent "
                          "request POST logging")
    pod, namespace = split_dotted(pod, namespace)
    cluster = KubeCluster(kubeconfig, context)
    text = kube.config_dump_text(cluster, kube.find_sidecar_pod(cluster, pod, namespace))
    return _render_text(what, text, fmt, "clusters", **filters)


def _render_text(what: str, data: str, fmt: str, endpoint_source: str,
                 **filters: Any) -> str:
    import yaml

    from remora.diagnose.proxy_config import secret as pcs
    from remora.diagnose.proxy_config.dump import parse_config_dump
    from remora.diagnose.proxy_config.render import render

    if what == "all" and fmt != "table":
        from remora.diagnose.proxy_config.render import all_dump_output

        return all_dump_output(data, fmt)
    if what in ("secret", "secrets"):
        from remora.diagnose.proxy_config.dump import load_config_dump

        items = pcs.items_from_config_dump(load_config_dump(data))
        if fmt == "table":
            return pcs.secret_table(items)
        text = pcs.secret_json(items) + "\n"
        return text if fmt == "json" else str(yaml.safe_dump(json.loads(text), sort_keys=False))
    dump = parse_config_dump(data)
    text = render(dump, what, fmt=fmt, endpoint_source=endpoint_source, **filters)
    return text if text.endswith("\n") else text + "\n"


def _offline(what: str, path: Path, fmt: str, **filters: Any) -> str:
    """`--file DUMP`: istioctl's tables from a saved config dump; endpoints from the dump's
    EndpointsConfigDump (as `istioctl proxy-config all` shows them); secrets from its
    SecretsConfigDump."""
    if what == "log":
        raise RemoraError("proxy-config log needs a running sidecar, not a file",
                          "give a pod name instead of --file")
    from remora.diagnose.textdecode import decode_evidence

    try:
        data = decode_evidence(path.read_bytes(), f"--file {path}")
    except OSError as exc:
        raise RemoraError(f"cannot read --file {path}: {exc.strerror}",
                          "give the path of a saved /config_dump") from exc
    try:
        return _render_text(what, data, fmt, "config_dump", **filters)
    except RemoraError as exc:
        if exc.problem.startswith(("config dump is not JSON", "config dump has no",
                                   "config dump is a")):
            raise RemoraError(f"--file {path}{exc.problem[len('config dump'):]}",
                              exc.fix) from exc
        raise


def _config_dir(state_dir: Path, pod: dict[str, Any]) -> Path:
    """Where the lab wrote the pod's sidecar config (remora.lab.setup), by the node's
    pod folder naming (NodeConfig.pods_root / NAMESPACE_NAME_UID)."""
    from remora.lab.setup import CONFIG_DIR
    from remora.node.config import NodeConfig

    meta = pod["metadata"]
    folder = f"{meta['namespace']}_{meta['name']}_{meta.get('uid', '')}"
    return NodeConfig(state_dir=state_dir).pods_root / folder / CONFIG_DIR


def _secrets(netns: str, where: str, config_dir: Path, output: str) -> str:
    import yaml

    from remora.diagnose.proxy_config import secret as pcs

    dump = json.loads(admin.request(netns, "GET", "/config_dump", where=where))
    items = pcs.secret_items(dump, config_dir)
    if output == "short":
        return pcs.secret_table(items)
    text = pcs.secret_json(items) + "\n"
    return text if output == "json" else str(yaml.safe_dump(json.loads(text), sort_keys=False))
