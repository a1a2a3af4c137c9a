"""kubectl-like commands over the lab: up, down, apply, delete, get, describe, logs, exec,
patch, rollout (docs/lab.md). Thin: each command reads its flags, asks the node daemon
(remora.node.client) and prints with remora.lab.tables / remora.lab.describe."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from remora.errors import RemoraError, UsageError
from remora.lab import describe as describe_text
from remora.lab import manifests, ops, progress, session, tables
from remora.lab import settings as lab_settings
from remora.lab.images import ImageMap
from remora.node import ipam, naming
from remora.node.client import NodeClient
from remora.node.config import NodeConfig

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _state_option(func: Any) -> Any:
    return click.option("--state-dir", envvar="REMORA_STATE_DIR", default=None,
                        help="the lab's state directory [default: $REMORA_STATE_DIR, "
                             "else /var/lib/remora]")(func)


def _client(state_dir: str | None) -> NodeClient:
    return session.connect(session.state_dir(state_dir))


def _images(state_dir: str | None) -> ImageMap:
    return ImageMap.from_file(lab_settings.load(session.state_dir(state_dir)).image_map or None)


def _given(names: tuple[str, ...]) -> set[str]:
    """The options the user typed (not defaults)."""
    ctx = click.get_current_context()
    return {n for n in names
            if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}


def _validate_option(func: Any) -> Any:
    return click.option(
        "--validate", default=manifests.STRICT, is_flag=False, flag_value=manifests.STRICT,
        metavar="strict|warn|ignore", show_default=True,
        help="an object with a field Kubernetes' schema lacks (a typo): strict refuses it "
             "(and with it the whole batch: nothing is applied), warn applies it "
             "without the field, ignore too, silently; true = strict, false = ignore, as "
             "kubectl")(func)


def _unknown_fields(doc: dict[str, Any]) -> list[str]:
    """The paths of DOC's fields Kubernetes' schema of its kind lacks, as the lab's
    Kubernetes API finds them (kubeapi.field_validation, the served OpenAPI); not in
    status, which a write drops (and the lab serves with fields of its own)."""
    from remora.kubeapi import field_validation

    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    return field_validation.unknown_fields(group, version, str(doc.get("kind", "")),
                                           {k: v for k, v in doc.items() if k != "status"})


def _read(files: tuple[str, ...], validate: str) -> manifests.Batch:
    """The manifests, each object checked against Kubernetes' schema by --validate. An
    object strict refuses refuses the whole batch, before anything changes (kubectl
    applies a file's other objects, each its own request; remora's apply is all or
    nothing): every refusal is named, then exit 1."""
    batch = manifests.read(list(files), manifests.validation(validate), _unknown_fields)
    if batch.refused:
        for line in batch.refused:
            click.echo(f"remora: error: {line}", err=True)
        click.echo(f"remora: nothing applied: {len(batch.refused)} object(s) refused by "
                   "--validate=strict", err=True)
        sys.exit(1)
    return batch


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"Warning: {w}", err=True)


def _wait(client: NodeClient, batch: manifests.Batch, timeout: float) -> None:
    start = time.monotonic()
    progress.wait(client, manifests.names_namespaces(batch.objects), timeout, echo=click.echo,
                  expect=manifests.bare_pods(batch.objects),
                  deployments=manifests.deployments(batch.objects))
    click.echo(f"all pods Ready in {time.monotonic() - start:.1f}s")


# -- up / down -------------------------------------------------------------------------------
@click.command(context_settings=CONTEXT)
@click.option("-f", "--filename", "files", multiple=True, help="manifest file or directory")
@click.option("--wait", is_flag=True, help="block until every pod is Ready")
@click.option("--timeout", default=60.0, show_default=True, help="seconds --wait waits")
@click.option("--sidecar", type=click.Choice(lab_settings.SIDECARS), default="remora",
              show_default=True, help="the sidecar proxy: `remora proxy` or a real Envoy")
@click.option("--image-map", type=click.Path(dir_okay=False), default=None,
              help="YAML file mapping images to local commands (docs/lab.md)")
@click.option("--mtls/--no-mtls", default=True, show_default=True,
              help="Istio's auto mTLS between sidecars (certificates from the lab's CA)")
@click.option("--nodes", default=1, show_default=True, help="number of nodes")
@click.option("--prefix", default=naming.DEFAULT_PREFIX, show_default=True,
              help="prefix of every namespace the lab creates")
@click.option("--pod-ip-start", default=2, show_default=True,
              help="first host address given to pods in each node's /24")
@click.option("--ip-family", type=click.Choice(["ipv4", "ipv6", "dual"]), default="ipv4",
              show_default=True,
              help="pod and service addresses: IPv4, IPv6 (fd00:10:20::/48) or dual stack")
@_validate_option
@_state_option
def up(files: tuple[str, ...], wait: bool, timeout: float, sidecar: str, image_map: str | None,
       mtls: bool, nodes: int, prefix: str, pod_ip_start: int, ip_family: str, validate: str,
       state_dir: str | None) -> None:
    """Start the lab (node daemon) if it is not running, then apply manifests."""
    batch = _read(files, validate) if files else None  # bad input fails before start
    settings = lab_settings.LabSettings(sidecar=sidecar,
                                        image_map=str(Path(image_map).resolve())
                                        if image_map else "", mtls=mtls, ip_family=ip_family)
    images = ImageMap.from_file(settings.image_map or None)
    directory = session.state_dir(state_dir)
    topology = _given(("nodes", "prefix"))
    session.refuse_topology(directory, "remora up",
                            nodes=nodes if "nodes" in topology else None,
                            prefix=prefix if "prefix" in topology else None)
    session.refuse_differences(directory, settings,
                               _given(("sidecar", "mtls", "image_map", "ip_family")),
                               "remora up")
    if batch is not None:  # injection and images too, before a daemon is started for it
        ops.admission_check_offline(batch, images)
        if session.fresh(directory):  # no lab yet: only the batch's own namespaces exist
            manifests.check_namespaces(batch.objects, set())
            plan = NodeConfig(state_dir=directory, nodes=nodes,
                              pod_ip_start=pod_ip_start, ip_family=ip_family).plan()
            manifests.check_capacity(batch.objects, [], manifests.Capacity(
                nodes, ipam.pods_per_node(plan), plan.max_nodes), directory)
    adopting = not session.fresh(directory) and not NodeClient(directory).alive()
    client, started = session.up(directory, settings, prefix=prefix, nodes=nodes,
                                 pod_ip_start=pod_ip_start)
    info = client.ping()
    running = lab_settings.load(directory)
    how = ("started, adopting the pods still running" if adopting else "started") \
        if started else "already running"
    family = "" if running.ip_family == "ipv4" else \
        f", {'dual stack' if running.ip_family == 'dual' else 'IPv6'}"
    click.echo(f"lab {how}: daemon pid {info['pid']}, "
               f"{info['nodes']} node(s), state {info['state_dir']}, sidecar "
               f"{running.sidecar}, mTLS {'on' if running.mtls else 'off'}{family}")
    if batch is None:
        return
    _warn(batch.warnings)
    for line in ops.apply_batch(client, batch, images):
        click.echo(line)
    if wait:
        _wait(client, batch, timeout)


@click.command(context_settings=CONTEXT)
@_state_option
def down(state_dir: str | None) -> None:
    """Remove every namespace, link, rule, process and file of the lab."""
    removed = session.down(session.state_dir(state_dir))
    click.echo(f"lab removed ({len(removed)} objects)" if removed else "no lab to remove")


# -- apply / delete / patch ------------------------------------------------------------------
@click.command(context_settings=CONTEXT)
@click.option("-f", "--filename", "files", multiple=True, required=True,
              help="manifest file or directory ('-' for stdin)")
@click.option("--wait", is_flag=True, help="block until every pod is Ready")
@click.option("--timeout", default=60.0, show_default=True)
@_validate_option
@_state_option
def apply(files: tuple[str, ...], wait: bool, timeout: float, validate: str,
          state_dir: str | None) -> None:
    """Apply manifests (all or nothing)."""
    batch = _read(files, validate)
    client = _client(state_dir)
    _warn(batch.warnings)
    for line in ops.apply_batch(client, batch, _images(state_dir)):
        click.echo(line)
    if wait:
        _wait(client, batch, timeout)


@click.command(context_settings=CONTEXT)
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-f", "--filename", "files", multiple=True)
@click.option("-n", "--namespace", default="default", show_default=True)
@_state_option
def delete(kind: str | None, name: str | None, files: tuple[str, ...], namespace: str,
           state_dir: str | None) -> None:
    """Delete objects: `delete -f FILE` or `delete KIND NAME -n NS`."""
    client = _client(state_dir)
    if files:
        batch = manifests.read(list(files))
        targets = [(o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"])
                   for o in reversed(batch.objects)]
    elif kind:
        k, n = ops.kind_name(kind, name)
        targets = [(k, namespace, n)]
    else:
        raise UsageError("nothing to delete", "give -f FILE or KIND NAME")
    for k, ns, n in targets:
        for line in client.delete(k, n, ns):
            click.echo(line)


@click.group(context_settings=CONTEXT)
def create() -> None:
    """Create an object from the command line (kubectl create): namespace (ns)."""


@click.command("namespace", context_settings=CONTEXT)
@click.argument("name")
@_state_option
def create_namespace(name: str, state_dir: str | None) -> None:
    """Create a namespace (then `remora label ns NAME istio-injection=enabled`)."""
    click.echo(ops.create_namespace(_client(state_dir), name))


create.add_command(create_namespace, "namespace")
create.add_command(create_namespace, "ns")


@click.command(context_settings=CONTEXT)
@click.argument("kind")
@click.argument("args", nargs=-1)
@click.option("--overwrite", is_flag=True, help="replace a label's existing value")
@_state_option
def label(kind: str, args: tuple[str, ...], overwrite: bool, state_dir: str | None) -> None:
    """Set (KEY=VALUE) or remove (KEY-) a namespace's labels: label ns NAME KEY=VALUE..."""
    rest = list(args)
    if "/" in kind:
        kind, name = kind.split("/", 1)
    elif rest:
        name = rest.pop(0)
    else:
        raise UsageError("a resource name is needed", "give ns NAME KEY=VALUE")
    if tables.kind_of(kind) != "Namespace":
        raise UsageError(f"remora label works on namespaces, not {tables.kind_of(kind)}",
                         "set the labels of other objects in their manifest and "
                         "`remora apply -f` it")
    click.echo(ops.label_namespace(_client(state_dir), name, rest, overwrite))


@click.command(context_settings=CONTEXT)
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-p", "--patch", "patch_text", required=True, help="strategic-merge patch (JSON)")
@click.option("--type", "patch_type", type=click.Choice(["strategic"]), default="strategic")
@_state_option
def patch(kind: str, name: str | None, namespace: str, patch_text: str, patch_type: str,
          state_dir: str | None) -> None:
    """Patch an object (strategic merge); a Deployment's new template rolls out new pods."""
    from remora.resources.loader import parse_object
    from remora.resources.patch import apply_patch

    k, n = ops.kind_name(kind, name)
    client = _client(state_dir)
    found = [o for o in client.get(k, None if k == "Namespace" else namespace)
             if o["metadata"]["name"] == n]
    if not found:
        raise RemoraError(f"{k.lower()} {n!r} not found in namespace {namespace!r}",
                          f"list them with `remora get {k.lower()} -n {namespace}`")
    current, _ = parse_object(tables.strip_internal(found[0]), f"{k}/{n}")
    if current is None:
        raise RemoraError(f"{k} {n} cannot be patched", "patch a Deployment or a Service")
    new, warnings = apply_patch(current, patch_text)
    _warn(warnings)
    batch = manifests.Batch([new.to_dict()])
    results = ops.apply_batch(client, batch, _images(state_dir))
    group = {"Deployment": "deployment.apps"}.get(k, k.lower())
    unchanged = results and results[0].endswith("unchanged")
    click.echo(f"{group}/{n} patched" + (" (no change)" if unchanged else ""))


@click.group(context_settings=CONTEXT)
def rollout() -> None:
    """Watch a Deployment's rollout."""


@rollout.command("status", context_settings=CONTEXT)
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--timeout", default=120.0, show_default=True)
@_state_option
def rollout_status(kind: str, name: str | None, namespace: str, timeout: float,
                   state_dir: str | None) -> None:
    """Wait until a Deployment's new pods are Ready and its old ones gone."""
    k, n = ops.kind_name(kind, name)
    if k != "Deployment":
        raise UsageError(f"rollout status works on deployments, not {k}",
                         "give deployment/NAME")
    progress.rollout(_client(state_dir), namespace, n, timeout, click.echo)


# -- get / describe --------------------------------------------------------------------------
@click.command(context_settings=CONTEXT)
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-l", "--selector", default=None, help="label selector, e.g. web=server")
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json", "name"]),
              default=None)
@click.option("--show-labels", is_flag=True, help="add a LABELS column")
@_state_option
def get(kind: str, name: str | None, namespace: str, all_namespaces: bool,
        selector: str | None, output: str | None, show_labels: bool,
        state_dir: str | None) -> None:
    """List pods, svc, deploy, ns, pa or ap (or several: pods,svc), with kubectl's columns."""
    kinds = [tables.kind_of(k) for k in kind.split(",") if k]
    client = _client(state_dir)
    found = [(k, ops.select(client, k, None if all_namespaces else namespace, name, selector))
             for k in kinds]
    if output in ("yaml", "json"):
        items = [o for _, objs in found for o in objs]
        click.echo(tables.structured(items, output, single=name is not None and len(kinds) == 1),
                   nl=False)
        return
    if output == "name" and any(objs for _, objs in found):
        click.echo("".join(tables.names(k, objs) for k, objs in found), nl=False)
        return
    texts = [tables.table(k, objs, time.time(), wide=output == "wide",
                          all_namespaces=all_namespaces, kind_prefix=len(kinds) > 1,
                          show_labels=show_labels)
             for k, objs in found if objs]
    if not texts:
        where = "" if all_namespaces or kinds == ["Namespace"] else f" in {namespace} namespace"
        click.echo(f"No resources found{where}.", err=True)
        return
    click.echo("\n".join(texts), nl=False)


@click.command(context_settings=CONTEXT)
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-l", "--selector", default=None)
@_state_option
def describe(kind: str, name: str | None, namespace: str, selector: str | None,
             state_dir: str | None) -> None:
    """Show one object (or all selected) in detail."""
    if "/" in kind and name is None:
        kind, name = kind.split("/", 1)
    k = tables.kind_of(kind)
    client = _client(state_dir)
    items = ops.select(client, k, namespace, name, selector)
    now = time.time()
    texts = []
    recorded: list[dict[str, Any]] = (list(client.call("events")["items"])
                                      if items and k in ("Pod", "Deployment") else [])
    for obj in items:
        if k == "Pod":
            texts.append(describe_text.pod(obj, now, recorded))
        elif k == "Deployment":
            pods = [p for p in client.get("Pod", namespace)
                    if (p["metadata"].get("ownerReferences") or [{}])[0].get("name")
                    == obj["metadata"]["name"]]
            texts.append(describe_text.deployment(obj, pods, now, recorded))
        elif k == "Service":
            texts.append(describe_text.service(obj, ops.endpoints_of(client, obj), now))
        elif k in ("PeerAuthentication", "AuthorizationPolicy"):
            texts.append(describe_text.custom_resource(obj, now))
        else:
            texts.append(describe_text.namespace(obj, now))
    click.echo("\n".join(texts), nl=False)


@click.command(context_settings=CONTEXT)
@click.argument("pod", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-l", "--selector", default=None)
@click.option("-c", "--container", default=None, help="e.g. istio-proxy for the access log")
@click.option("-f", "--follow", "follow_", is_flag=True)
@click.option("--tail", type=int, default=None,
              help="last N lines (default: all; 10 with -l, as kubectl)")
@click.option("-p", "--previous", is_flag=True, help="the previous run of a restarted container")
@_state_option
def logs(pod: str | None, namespace: str, selector: str | None, container: str | None,
         follow_: bool, tail: int | None, previous: bool, state_dir: str | None) -> None:
    """Print a container's log (istio-proxy: the sidecar's access log)."""
    client = _client(state_dir)
    names = ops.pods_for(client, namespace, pod, selector)
    if tail is None and selector and not pod:
        tail = 10
    paths = []
    for name in names:
        got = client.logs(namespace, name, container, previous, None if follow_ else tail)
        if previous and not Path(got["path"]).exists():
            # kubelet: a container that never terminated has no previous log, an error
            # (kubectl exits 1 with it), not an empty one; the kube API says the same
            raise RemoraError(f'previous terminated container "{got["container"]}" in pod '
                              f'"{name}" not found',
                              f"drop -p: `remora logs {name} -n {namespace}"
                              + (f" -c {got['container']}" if container else "") + "`")
        if not follow_:
            click.echo(got["text"], nl=False)
        paths.append(Path(got["path"]))
    if follow_:
        ops.follow_logs(paths, tail)


def _exec_options(given: tuple[str, ...], namespace: str,
                  container: str | None) -> tuple[str, str | None]:
    """-n/--namespace and -c/--container given after POD (the only options there)."""
    it = iter(given)
    for opt in it:
        key, eq, value = opt.partition("=")
        if key not in ("-n", "--namespace", "-c", "--container"):
            raise UsageError(f"unexpected {opt!r} between the pod and `--`",
                             "only -n/--namespace and -c/--container go there; the command "
                             "follows `--`")
        if not eq:
            value = next(it, "")
        if not value:
            raise UsageError(f"{key} needs a value", f"e.g. {key} NAME")
        if key in ("-n", "--namespace"):
            namespace = value
        else:
            container = value
    return namespace, container


@click.command("exec", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-c", "--container", default=None)
@_state_option
@click.argument("pod")
@click.argument("command", nargs=-1, required=True)
def exec_(namespace: str, container: str | None, state_dir: str | None, pod: str,
          command: tuple[str, ...]) -> None:
    """Run COMMAND inside the pod's namespaces: remora exec -n NS POD -- iptables -t nat -L -v"""
    if "--" in command:
        # options between POD and `--` (`remora exec POD -c istio-proxy -- env`, as kubectl
        # takes them): click stops at POD so that the command's own options stay its own
        at = command.index("--")
        namespace, container = _exec_options(command[:at], namespace, container)
        command = command[at + 1:]
    client = _client(state_dir)
    name = ops.pods_for(client, namespace, pod, None)[0]
    argv = client.exec_argv(namespace, name, container)
    if not command:
        raise UsageError("no command to run", "e.g. remora exec -n NS POD -- iptables -t nat -L")
    try:
        code = subprocess.call([*argv, *command])
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
