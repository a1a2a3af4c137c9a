"""Multi-document YAML manifests -> typed objects, with warnings and all-or-nothing errors.

``load_manifests`` reads every document before returning anything: one invalid object
raises a ``RemoraError`` naming it, its field and what is wrong, so an apply is never
half-done. Unknown kinds and unknown fields come back as warnings (strings), never
printed here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remora.errors import RemoraError
from remora.resources.objects import (
    Container,
    ContainerPort,
    Deployment,
    EnvVar,
    Namespace,
    Object,
    ObjectMeta,
    Pod,
    PodSpec,
    PodTemplate,
    Service,
    ServicePort,
)
from remora.resources.reader import Context, Node, check_name
from remora.resources.security_loader import KINDS as SECURITY_KINDS
from remora.resources.security_loader import authorization_policy, peer_authentication

# Fields Kubernetes defines that change nothing in the lab: read silently.
_META_IGNORED = ("creationTimestamp", "uid", "resourceVersion", "generation", "managedFields",
                 "ownerReferences", "finalizers", "selfLink")
_CONTAINER_IGNORED = ("resources", "terminationMessagePath", "terminationMessagePolicy")
_POD_SPEC_IGNORED = ("terminationGracePeriodSeconds", "dnsPolicy", "schedulerName",
                     "securityContext", "serviceAccount", "enableServiceLinks")
# The PodSpec fields _pod_spec reads (the others are _POD_SPEC_IGNORED or unknown).
_POD_SPEC_KNOWN = ("containers", "initContainers", "restartPolicy", "serviceAccountName",
                   "serviceAccount")
_KINDS = {("v1", "Namespace"), ("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "Pod")}
_KINDS |= SECURITY_KINDS  # Istio's PeerAuthentication, AuthorizationPolicy (security_loader)


@dataclass
class Loaded:
    objects: list[Object] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def manifest_files(path: str | Path) -> list[Path]:
    """A manifest file, or every *.yaml/*.yml/*.json file of a directory (sorted)."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
    if p.is_file():
        return [p]
    raise RemoraError(f"manifest {p} does not exist", "give a YAML file or a directory")


def load_file(path: str | Path) -> Loaded:
    """A manifest file, or every *.yaml/*.yml/*.json file of a directory (sorted)."""
    out = Loaded()
    for f in manifest_files(path):
        part = load_manifests(f.read_text(), str(f))
        out.objects += part.objects
        out.warnings += part.warnings
    return out


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line with the lines to look at, 1-based as an editor counts
    them (its own text repeats the source as `in "<unicode string>"` and prints the
    offending line with a caret on lines of their own): `while parsing a flow sequence
    at line 5, column 11: expected ',' or ']', but got '<stream end>' at line 6,
    column 1`."""
    parts = []
    for text, mark in ((getattr(exc, "context", None), getattr(exc, "context_mark", None)),
                       (getattr(exc, "problem", None), getattr(exc, "problem_mark", None))):
        if text:
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            parts.append(f"{text}{at}")
    return ": ".join(parts) if parts else " ".join(str(exc).split())


def documents(text: str, source: str = "<input>") -> list[tuple[str, Any]]:
    """The objects of a multi-document YAML text, with where each is (`SOURCE document
    N`), the items of a v1 List one by one."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise RemoraError(f"{source}: not valid YAML: {yaml_problem(exc)}",
                          "fix the YAML syntax") from exc
    return [(f"{source} document {index + 1}", item) for index, doc in enumerate(docs)
            if doc is not None for item in _expand_list(doc, source, index)]


def load_manifests(text: str, source: str = "<input>") -> Loaded:
    out = Loaded()
    for where, item in documents(text, source):
        obj, warnings = parse_object(item, where)
        out.warnings += warnings
        if obj is not None:
            out.objects.append(obj)
    return out


def object_label(doc: Any) -> str:
    """How warnings and errors name an object: `Kind/namespace/name` (`Kind/name` for a
    Namespace)."""
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    kind = doc.get("kind") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
    return f"{kind}/{name}" if kind == "Namespace" else f"{kind}/{namespace}/{name or '?'}"


def reads_kind(doc: Any) -> bool:
    """DOC is of a kind remora reads (the others are skipped with a warning)."""
    return isinstance(doc, dict) and (doc.get("apiVersion"), doc.get("kind")) in _KINDS


def _expand_list(doc: Any, source: str, index: int) -> list[Any]:
    # `kubectl get -o yaml` writes a v1 List; accept it as kubectl apply does.
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return list(doc["items"])
    return [doc]


def parse_object(doc: Any, where: str) -> tuple[Object | None, list[str]]:
    """One manifest object -> (object or None for an unknown kind, warnings)."""
    if not isinstance(doc, dict):
        raise RemoraError(f"{where}: expected a Kubernetes object (a mapping), got "
                          f"{type(doc).__name__}",
                          "each YAML document must be one object with apiVersion, kind and "
                          "metadata")
    kind = doc.get("kind")
    api = doc.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        raise RemoraError(f"{where}: kind is missing", "every object needs apiVersion and kind")
    label = object_label(doc)
    if (api, kind) not in _KINDS:
        known = ", ".join(f"{a} {k}" for a, k in sorted(_KINDS))
        return None, [f"{where}: {label}: unknown kind {api}/{kind} (skipped; remora "
                      f"reads {known})"]
    ctx = Context(label)
    root = Node(ctx, doc, "", ignore=("apiVersion", "kind", "status"))
    obj: Object
    if kind == "Namespace":
        obj = Namespace(metadata=_meta(root, namespaced=False))
        root.node("spec")  # Namespace spec (finalizers) has no effect here
    elif kind == "Deployment":
        obj = _deployment(root)
    elif kind == "Service":
        obj = _service(root)
    elif kind == "PeerAuthentication":
        obj = peer_authentication(root, _meta(root))
    elif kind == "AuthorizationPolicy":
        obj = authorization_policy(root, _meta(root))
    else:
        obj = Pod(metadata=_meta(root), spec=_pod_spec(root.node("spec", ignore=_POD_SPEC_IGNORED,
                                                                 required=True)))
    root.done()
    return obj, ctx.warnings


def _meta(root: Node, namespaced: bool = True) -> ObjectMeta:
    m = root.node("metadata", ignore=_META_IGNORED, required=True)
    assert m is not None
    name = m.string("name", required=True)
    check_name(m.ctx, m.sub("name"), name, label=not namespaced or root.value["kind"] == "Service")
    namespace = "default"
    if namespaced:
        namespace = m.string("namespace", "default")
        check_name(m.ctx, m.sub("namespace"), namespace, label=True)
    out = ObjectMeta(name=name, namespace=namespace, labels=m.string_map("labels", labels=True),
                     annotations=m.string_map("annotations"))
    m.done()
    return out


def _deployment(root: Node) -> Deployment:
    meta = _meta(root)
    spec = root.node("spec", required=True)
    assert spec is not None
    replicas = spec.integer("replicas", 1, minimum=0, maximum=1000)
    # kept for the node's deployment controller (remora.node.rollout: a pod is available
    # minReadySeconds after it became Ready); an int32 at least 0 (apps/v1
    # ValidateDeploymentSpec: ValidateNonnegativeField)
    min_ready = spec.raw("minReadySeconds")
    min_ready = 0 if min_ready is None else spec.check_int(
        min_ready, spec.sub("minReadySeconds"), 0, 2**31 - 1)
    paused = spec.raw("paused")
    if paused is not None and not isinstance(paused, bool):
        raise spec.ctx.error(spec.sub("paused"), f"must be true or false, not {paused!r}",
                             "write paused: true or paused: false")
    # kept for the node's deployment controller (remora.node.rollout: the Progressing
    # condition's ProgressDeadlineExceeded); the apiserver wants it an int32 above
    # minReadySeconds (apps/v1 ValidateDeploymentSpec: "must be greater than
    # minReadySeconds")
    deadline = spec.raw("progressDeadlineSeconds")
    if deadline is not None:
        deadline = spec.check_int(deadline, spec.sub("progressDeadlineSeconds"), 1, 2**31 - 1)
    # the apiserver defaults it (600) before it validates, so the default counts too
    effective = 600 if deadline is None else deadline
    if effective <= min_ready:
        raise spec.ctx.error(spec.sub("progressDeadlineSeconds"),
                             f"invalid value {effective}: must be greater than "
                             "minReadySeconds", "raise it above minReadySeconds")
    # kept for the node's revision history (remora.node.desired.record_revision)
    history = spec.raw("revisionHistoryLimit")
    if history is not None:
        history = spec.check_int(history, spec.sub("revisionHistoryLimit"), 0, 2**31 - 1)
    strategy, max_surge, max_unavailable = _strategy(spec.node("strategy"))
    sel = spec.node("selector", required=True)
    assert sel is not None
    match = sel.string_map("matchLabels", labels=True)
    if sel.has("matchExpressions"):
        raise sel.ctx.error(sel.sub("matchExpressions"), "not supported",
                            "use selector.matchLabels")
    if not match:
        raise sel.ctx.error(sel.sub("matchLabels"), "required field is missing",
                            "select the pods by their template labels")
    sel.done()
    tmpl = spec.node("template", required=True)
    assert tmpl is not None
    tmeta = tmpl.node("metadata", ignore=("creationTimestamp", "name"))
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if tmeta is not None:
        labels = tmeta.string_map("labels", labels=True)
        annotations = tmeta.string_map("annotations")
        tmeta.done()
    for key, value in match.items():
        if labels.get(key) != value:
            raise spec.ctx.error("spec.template.metadata.labels",
                                 f"selector does not match template labels: "
                                 f"{key}={value} is not among them",
                                 "give the pod template the labels of spec.selector.matchLabels")
    pod_spec = _pod_spec(tmpl.node("spec", ignore=_POD_SPEC_IGNORED, required=True))
    tmpl.done()
    spec.done()
    return Deployment(metadata=meta, selector=match, replicas=replicas,
                      template=PodTemplate(labels=labels, annotations=annotations, spec=pod_spec),
                      strategy=strategy, max_surge=max_surge,
                      max_unavailable=max_unavailable, progress_deadline=deadline,
                      revision_history=history, min_ready=min_ready, paused=bool(paused))


def _strategy(strategy: Node | None
              ) -> tuple[str, int | str | None, int | str | None]:
    """spec.strategy: its type, and RollingUpdate's maxSurge and maxUnavailable, checked
    as the apiserver does (apps/v1 ValidateDeploymentStrategy and
    ValidateRollingUpdateDeployment), and honoured by the node's controller."""
    if strategy is None:
        return "RollingUpdate", None, None
    kind = strategy.string("type", "RollingUpdate")
    if kind not in ("RollingUpdate", "Recreate"):
        raise strategy.ctx.error(strategy.sub("type"), f'unsupported value "{kind}"',
                                 'use "RollingUpdate" or "Recreate"')
    rolling = strategy.node("rollingUpdate")
    strategy.done()
    if kind == "Recreate":
        if rolling is not None:
            raise strategy.ctx.error(strategy.sub("rollingUpdate"), "may not be specified "
                                     "when strategy `type` is 'Recreate'",
                                     "remove rollingUpdate, or use type RollingUpdate")
        return kind, None, None
    if rolling is None:
        return kind, None, None
    values: dict[str, int | str | None] = {}
    for key in ("maxSurge", "maxUnavailable"):
        value = rolling.raw(key)
        path = rolling.sub(key)
        if value is None:
            values[key] = None
            continue
        if isinstance(value, str):
            if not (value.endswith("%") and value[:-1].isdigit()):
                raise rolling.ctx.error(path, f"invalid value {value!r}: a valid percent "
                                        "string must be a numeric string followed by an "
                                        "ending '%'", "use a whole number or e.g. '25%'")
            if key == "maxUnavailable" and int(value[:-1]) > 100:
                raise rolling.ctx.error(path, f"invalid value {value!r}: must not be greater "
                                        "than 100%", "use at most '100%'")
            values[key] = value
        else:
            values[key] = rolling.check_int(value, path, minimum=0)
    rolling.done()
    if values["maxSurge"] in (0, "0%") and values["maxUnavailable"] in (0, "0%"):
        raise rolling.ctx.error(rolling.sub("maxUnavailable"), "may not be 0 when maxSurge "
                                "is 0", "allow some surge or some unavailable pods")
    return kind, values["maxSurge"], values["maxUnavailable"]


def _pod_spec(spec: Node | None) -> PodSpec:
    assert spec is not None
    containers = tuple(_container(spec, p, c) for p, c in spec.items("containers"))
    if not containers:
        # an unknown field would only be warned about after this error, so a typo
        # (`contianers:`) left the user with "required" and no clue: name it here
        known = (*_POD_SPEC_KNOWN, *_POD_SPEC_IGNORED)
        unknown = [k for k in spec.value if k not in known]
        typo = [k for k in unknown if difflib.get_close_matches(k, ["containers"], 1, 0.7)]
        hint = (f" (unknown field {spec.sub(typo[0])}: a typo of containers?)" if typo else
                f" (unknown field{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(spec.sub(k) for k in unknown)})" if unknown else "")
        raise spec.ctx.error(spec.sub("containers"), "at least one container is required" + hint,
                             f"rename {spec.sub(typo[0])} to {spec.sub('containers')}" if typo
                             else "add a container with a name and an image to "
                             f"{spec.sub('containers')}")
    inits = tuple(_container(spec, p, c) for p, c in spec.items("initContainers"))
    seen: set[str] = set()
    for c in inits + containers:
        if c.name in seen:
            raise spec.ctx.error(spec.sub("containers"), f"duplicate container name {c.name!r}",
                                 "give every container and init container its own name")
        seen.add(c.name)
    restart = spec.string("restartPolicy", "Always")
    if restart not in ("Always", "OnFailure", "Never"):
        raise spec.ctx.error(spec.sub("restartPolicy"), f"unsupported value {restart!r}",
                             "use Always, OnFailure or Never")
    account = spec.string("serviceAccountName", "") or spec.string("serviceAccount", "default")
    spec.done()
    return PodSpec(containers=containers, initContainers=inits, restartPolicy=restart,
                   serviceAccountName=account)


def _container(parent: Node, path: str, value: Any) -> Container:
    n = Node(parent.ctx, value, path, ignore=_CONTAINER_IGNORED)
    name = n.string("name", required=True)
    check_name(n.ctx, n.sub("name"), name, label=True)
    image = n.string("image", required=True)
    env = []
    for p, item in n.items("env"):
        e = Node(n.ctx, item, p)
        env.append(EnvVar(name=e.string("name", required=True), value=e.string("value"),
                          valueFrom=e.raw("valueFrom")))
        e.done()
    ports = []
    for p, item in n.items("ports"):
        pn = Node(n.ctx, item, p, ignore=("hostIP",))
        port_name = pn.string("name")
        if port_name:
            check_name(n.ctx, pn.sub("name"), port_name, label=True)
        protocol = pn.string("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise n.ctx.error(pn.sub("protocol"), f"unsupported protocol {protocol!r}",
                              "use TCP, UDP or SCTP")
        if pn.has("hostPort"):
            pn.port("hostPort")
            n.ctx.warnings.append(f"{n.ctx.obj}: {pn.sub('hostPort')} has no effect in the lab")
        ports.append(ContainerPort(containerPort=pn.port("containerPort"), name=port_name,
                                   protocol=protocol))
        pn.done()
    policy = n.string("imagePullPolicy")
    if policy and policy not in ("Always", "IfNotPresent", "Never"):
        raise n.ctx.error(n.sub("imagePullPolicy"), f"unsupported value {policy!r}",
                          "use Always, IfNotPresent or Never")
    sc = n.raw("securityContext")
    if sc is not None and not isinstance(sc, dict):
        raise n.ctx.error(n.sub("securityContext"), "expected an object",
                          "write it as a mapping, e.g. securityContext: {runAsUser: 1000}")
    probes = {}
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = n.raw(kind)
        if probe is not None and not isinstance(probe, dict):
            raise n.ctx.error(n.sub(kind), "expected an object",
                              f"write it as a mapping, e.g. {kind}: {{tcpSocket: {{port: 8080}}}}")
        probes[kind] = probe
    out = Container(name=name, image=image, command=n.strings("command"), args=n.strings("args"),
                    env=tuple(env), ports=tuple(ports), imagePullPolicy=policy,
                    workingDir=n.string("workingDir"), securityContext=sc,
                    readinessProbe=probes["readinessProbe"],
                    livenessProbe=probes["livenessProbe"],
                    startupProbe=probes["startupProbe"])
    n.done()
    return out


def _service(root: Node) -> Service:
    meta = _meta(root)
    spec = root.node("spec", required=True, ignore=("sessionAffinity",
                                                    "internalTrafficPolicy"))
    assert spec is not None
    svc_type = spec.string("type", "ClusterIP")
    if svc_type != "ClusterIP":
        raise spec.ctx.error(spec.sub("type"), f"type {svc_type} is not supported",
                             "use type: ClusterIP (the lab has no node ports or load balancers)")
    cluster_ip = spec.string("clusterIP")
    if cluster_ip == "None":
        raise spec.ctx.error(spec.sub("clusterIP"), "headless services are not supported",
                             "leave clusterIP out to get one allocated")
    ports = []
    names: set[str] = set()
    # (port, protocol) pairs seen: the API server's ValidateService refuses a second port
    # with the same number and protocol ("spec.ports[1]: Duplicate value: ..."), whatever
    # the names; accepting it would give two Envoy clusters and listeners of one name,
    # which every sidecar would reject (Istio names them outbound|PORT||HOST)
    seen_ports: dict[tuple[int, str], str] = {}
    for p, item in spec.items("ports"):
        pn = Node(spec.ctx, item, p, ignore=("nodePort",))
        port = pn.port("port")
        target: int | str = port
        raw_target = pn.raw("targetPort")
        if isinstance(raw_target, str) and raw_target.isdigit():
            raw_target = int(raw_target)
        if isinstance(raw_target, str):
            check_name(spec.ctx, pn.sub("targetPort"), raw_target, label=True)
            target = raw_target
        elif raw_target is not None:
            target = pn.check_int(raw_target, pn.sub("targetPort"), 1, 65535, what="a port")
        name = pn.string("name")
        if name:
            check_name(spec.ctx, pn.sub("name"), name, label=True)
        if name in names:
            raise spec.ctx.error(pn.sub("name"), f"Duplicate value: {name!r} (duplicate port name)",
                                 "give every port of the service its own name")
        names.add(name)
        protocol = pn.string("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise spec.ctx.error(pn.sub("protocol"), f"unsupported protocol {protocol!r}",
                                 "use TCP, UDP or SCTP")
        if (port, protocol) in seen_ports:
            raise spec.ctx.error(p, f"Duplicate value: port {port}/{protocol} is already "
                                    f"{seen_ports[(port, protocol)]}",
                                 "give every port of the service its own port number (or "
                                 "protocol); one port can carry one name only")
        seen_ports[(port, protocol)] = p
        ports.append(ServicePort(port=port, targetPort=target, name=name, protocol=protocol,
                                 appProtocol=pn.string("appProtocol")))
        pn.done()
    if not ports:
        raise spec.ctx.error(spec.sub("ports"), "at least one port is required",
                             f"add a port to {spec.sub('ports')}, e.g. "
                             "- {port: 80, targetPort: 8080}")
    if len(ports) > 1 and "" in names:
        raise spec.ctx.error(spec.sub("ports"), "every port needs a name when there are several",
                             "name each port, e.g. http-web")
    # dual stack: kept as given; the node runtime defaults and checks them against the
    # cluster's families (remora.node.ipam.service_families), as the API server does
    out = Service(metadata=meta, selector=spec.string_map("selector", labels=True),
                  ports=tuple(ports), clusterIP=cluster_ip, type=svc_type,
                  ipFamilies=spec.strings("ipFamilies"),
                  ipFamilyPolicy=spec.string("ipFamilyPolicy"),
                  clusterIPs=spec.strings("clusterIPs"))
    spec.done()
    return out
