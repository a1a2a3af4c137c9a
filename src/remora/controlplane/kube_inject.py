"""`istioctl kube-inject` (pure): a workload manifest with Istio's sidecar injected, as
the injection template and the injector's post-processing of Istio master render it
(manifests/charts/istio-control/istio-discovery/files/injection-template.yaml and
pkg/kube/inject/webhook.go at istio/istio 86c9f01fd735, the release of the capture
goldens in tests/data), held to that commit's goldens
(pkg/kube/inject/testdata/inject/*.yaml.injected, tests/data/inject/).

With native sidecars (Kubernetes 1.29+, Istio's default there) istio-proxy is an init
container with `restartPolicy: Always`, placed right after istio-init; the annotation
`sidecar.istio.io/nativeSidecar: "false"` gives the classic layout (istio-proxy last in
`containers`). The lab's own admission (remora.controlplane.injection) is a separate,
smaller rendering the node runtime runs; this one is for printing.

The app's own HTTP/TCP/gRPC probes and lifecycle hooks are rewritten to the agent's
status port, the originals passed in ISTIO_KUBE_APP_PROBERS (pkg/kube/inject/app_probe.go).

Not rendered: CNI mode, custom templates, user volumes, `proxy.istio.io/overrides` and
the proxy's Prometheus-merge of an app's own scrape annotations.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from remora.controlplane import injection
from remora.errors import RemoraError
from remora.resources.loader import yaml_problem
from remora.resources.objects import ObjectMeta, Pod, PodSpec

DEFAULT_IMAGE = f"{injection.DEFAULT_HUB}/proxyv2:{injection.DEFAULT_TAG}"
# the chart's global.proxy.resources, as Kubernetes prints the quantities
DEFAULT_RESOURCES = {"limits": {"cpu": "2", "memory": "1Gi"},
                     "requests": {"cpu": "100m", "memory": "128Mi"}}
STATUS_PORT_DEFAULT = "15020"
_ZERO_SPEC: dict[str, dict[str, Any]] = {
    "Deployment": {"strategy": {}}, "DaemonSet": {"updateStrategy": {}},
    "StatefulSet": {"updateStrategy": {}}}
_ZERO_STATUS: dict[str, dict[str, int]] = {
    "DaemonSet": {"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                  "numberMisscheduled": 0, "numberReady": 0},
    "StatefulSet": {"availableReplicas": 0, "replicas": 0},
    "ReplicaSet": {"replicas": 0}, "ReplicationController": {"replicas": 0},
    "DeploymentConfig": {"availableReplicas": 0, "latestVersion": 0,
                         "observedGeneration": 0, "replicas": 0, "unavailableReplicas": 0,
                         "updatedReplicas": 0}}
TEMPLATE_KINDS = ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job",
                  "ReplicationController", "DeploymentConfig")


@dataclass(frozen=True)
class MeshSettings:
    """What of the mesh config the template reads: defaultConfig (ProxyConfig) and the
    trust domain (istioctl kube-inject --meshConfigFile)."""

    default_config: dict[str, Any] = field(default_factory=dict)
    trust_domain: str = "cluster.local"

    @classmethod
    def from_yaml(cls, text: str, source: str) -> MeshSettings:
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RemoraError(f"{source}: not YAML: {yaml_problem(exc)}",
                              "give a MeshConfig YAML file (defaultConfig: ...)") from None
        if not isinstance(doc, dict):
            raise RemoraError(f"{source}: a MeshConfig must be a mapping",
                              "give a MeshConfig YAML file (defaultConfig: ...)")
        if "mesh" in doc and isinstance(doc["mesh"], str):  # the istio ConfigMap's key
            return cls.from_yaml(doc["mesh"], source)
        return cls(dict(doc.get("defaultConfig") or {}),
                   str(doc.get("trustDomain") or "cluster.local"))


def _proxy_config(mesh: MeshSettings, annotations: dict[str, str], where: str) -> dict[str, Any]:
    """The pod's ProxyConfig: the mesh's defaultConfig, then proxy.istio.io/config."""
    out = copy.deepcopy(mesh.default_config)
    text = annotations.get("proxy.istio.io/config")
    if text:
        try:
            extra = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RemoraError(f"{where}: annotation proxy.istio.io/config is not YAML: "
                              f"{yaml_problem(exc)}", "give a ProxyConfig") from None
        if not isinstance(extra, dict):
            raise RemoraError(f"{where}: annotation proxy.istio.io/config is not a mapping",
                              "give a ProxyConfig, e.g. 'concurrency: 2'")
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def _int(annotations: dict[str, str], key: str, default: int, where: str) -> int:
    value = annotations.get(key)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise RemoraError(f"{where}: annotation {key}: {value!r} is not a whole number",
                          "give a number of seconds or attempts")
    return int(value)


_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL = {"n": -3, "u": -2, "m": -1, "": 0, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def canonical_quantity(text: str) -> str:
    """A resource quantity as Kubernetes prints it (apimachinery resource.Quantity's
    canonical form): the largest suffix of its family that keeps an integer, so
    `4000m` -> `4`, `1024Mi` -> `1Gi`, `1.5` -> `1500m`. Unreadable text is kept."""
    from decimal import Decimal, InvalidOperation

    text = text.strip()
    number = text.rstrip("KMGTPEkmnui")
    suffix = text[len(number):]
    try:
        value = Decimal(number)
    except InvalidOperation:
        return text
    if suffix in _BINARY[1:]:
        units = value * (1024 ** _BINARY.index(suffix))
        if units != units.to_integral_value():
            return text
        exp = 0
        while exp + 1 < len(_BINARY) and units % (1024 ** (exp + 1)) == 0 and units:
            exp += 1
        return f"{int(units // (1024 ** exp))}{_BINARY[exp]}"
    if suffix not in _DECIMAL:
        return text
    nanos = value * (Decimal(1000) ** (_DECIMAL[suffix] + 3))
    if nanos != nanos.to_integral_value():
        return text
    scaled, exp = int(nanos), -3
    while scaled and scaled % 1000 == 0 and exp < 6:
        scaled //= 1000
        exp += 1
    name = next(k for k, v in _DECIMAL.items() if v == exp)
    return f"{scaled}{name}"


def _resources(annotations: dict[str, str]) -> dict[str, Any]:
    keys = {"requests": ("sidecar.istio.io/proxyCPU", "sidecar.istio.io/proxyMemory"),
            "limits": ("sidecar.istio.io/proxyCPULimit", "sidecar.istio.io/proxyMemoryLimit")}
    if not any(k in annotations for pair in keys.values() for k in pair):
        return copy.deepcopy(DEFAULT_RESOURCES)
    out: dict[str, Any] = {}
    for part, (cpu, memory) in keys.items():
        got = {name: canonical_quantity(annotations[k])
               for name, k in (("cpu", cpu), ("memory", memory)) if k in annotations}
        if got:
            out[part] = got
    return out


def _port_json(port: dict[str, Any]) -> str:
    # Go's json.Marshal of core/v1 ContainerPort: field order, empty fields omitted
    ordered = {k: port[k] for k in ("name", "hostPort", "containerPort", "protocol", "hostIP")
               if port.get(k) not in (None, "", 0)}
    return json.dumps(ordered, separators=(",", ":"))


def _pod_ports(containers: list[dict[str, Any]]) -> str:
    items = [_port_json(p) for c in containers for p in c.get("ports") or []]
    lines = ["["] + [f"    {',' if i else ''}{item}" for i, item in enumerate(items)] + ["]"]
    return "\n".join(lines)


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resource_field(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"divisor": "1",
                                                             "resource": resource}}}


_PROBES = (("readinessProbe", "app-health", "readyz"), ("livenessProbe", "app-health", "livez"),
           ("startupProbe", "app-health", "startupz"))
_HOOKS = (("preStop", "app-lifecycle", "prestopz"), ("postStart", "app-lifecycle", "poststartz"))


def _ordered(action: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A probe action as Go's json.Marshal writes it: struct field order, no empties."""
    return {k: action[k] for k in keys if action.get(k) not in (None, "", [], {})}


def _prober(handler: dict[str, Any] | None, ports: dict[str, int], status_port: int,
            probe: bool) -> dict[str, Any] | None:
    """The agent's prober for one probe or hook (DumpAppProbers): named ports resolved;
    none for exec probes, for an unknown port name, or a probe already on the status port."""
    if not isinstance(handler, dict):
        return None
    timeout = handler.get("timeoutSeconds") if probe else None
    if isinstance(handler.get("grpc"), dict) and probe and not handler.get("httpGet") \
            and not handler.get("tcpSocket"):
        out: dict[str, Any] = {"grpc": _ordered(handler["grpc"], ("port", "service"))}
    else:
        kind = "httpGet" if isinstance(handler.get("httpGet"), dict) else \
            "tcpSocket" if isinstance(handler.get("tcpSocket"), dict) else None
        if kind is None:
            return None
        action = dict(handler[kind])
        port = action.get("port")
        if isinstance(port, str) and not port.isdigit():
            if port not in ports:
                return None
            action["port"] = ports[port]
        elif port is not None and int(port) == status_port:
            return None
        keys = ("path", "port", "host", "scheme", "httpHeaders") if kind == "httpGet" else (
            "port", "host")
        out = {kind: _ordered(action, keys)}
    if timeout:
        out["timeoutSeconds"] = timeout
    return out


def _rewritten(handler: dict[str, Any], url: str, port: int) -> dict[str, Any] | None:
    """The probe or hook pointed at the agent (convertAppProber*): HTTP GET of URL on the
    status port, HTTPS downgraded (the agent probes the app itself)."""
    if isinstance(handler.get("httpGet"), dict):
        out = copy.deepcopy(handler)
        out["httpGet"].update(path=url, port=port)
        if out["httpGet"].get("scheme") == "HTTPS":
            out["httpGet"]["scheme"] = "HTTP"
        return out
    for kind in ("tcpSocket", "grpc"):
        if isinstance(handler.get(kind), dict):
            out = {k: copy.deepcopy(v) for k, v in handler.items() if k != kind}
            out["httpGet"] = {"path": url, "port": port}
            return out
    return None


def rewrite_app_probes(containers: list[dict[str, Any]], status_port: int,
                       mesh_status_port: int = 15020) -> str:
    """Rewrite the probes and hooks of CONTAINERS (in place, the proxy skipped) and return
    ISTIO_KUBE_APP_PROBERS ("" when there is nothing to probe)."""
    probers: dict[str, Any] = {}
    for c in containers:
        if c.get("name") == "istio-proxy":
            continue
        ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports") or []
                 if p.get("name")}
        for field_name, prefix, suffix in _PROBES:
            found = _prober(c.get(field_name), ports, mesh_status_port, probe=True)
            if found is not None:
                probers[f"/{prefix}/{c['name']}/{suffix}"] = found
        for hook, prefix, suffix in _HOOKS:
            found = _prober((c.get("lifecycle") or {}).get(hook), ports, mesh_status_port,
                            probe=False)
            if found is not None:
                probers[f"/{prefix}/{c['name']}/{suffix}"] = found
        for field_name, prefix, suffix in _PROBES:
            if isinstance(c.get(field_name), dict):
                new = _rewritten(c[field_name], f"/{prefix}/{c['name']}/{suffix}", status_port)
                if new is not None:
                    c[field_name] = new
        for hook, prefix, suffix in _HOOKS:
            handler = (c.get("lifecycle") or {}).get(hook)
            if isinstance(handler, dict):
                new = _rewritten(handler, f"/{prefix}/{c['name']}/{suffix}", status_port)
                if new is not None:
                    c["lifecycle"][hook] = new
    return json.dumps(dict(sorted(probers.items())), separators=(",", ":")) if probers else ""


@dataclass(frozen=True)
class Workload:
    """What the template reads of the object that owns the pod (DeploymentMeta, TypeMeta)."""

    name: str
    namespace: str
    api_version: str
    kind: str


def _init_args(meta: dict[str, Any], mode: str, where: str) -> list[str]:
    annotations = {**(meta.get("annotations") or {}), injection.INTERCEPTION_MODE: mode}
    pod = Pod(metadata=ObjectMeta(name=where, annotations=annotations),
              spec=PodSpec(containers=()))
    args = injection.istio_init_args(pod)
    at = args.index("-d") + 1
    args[at] = args[at].rstrip(",")  # status port 0 and nothing excluded: "15090,15021"
    # virtual interfaces to reroute (-k) come after -q/-o and before -c in the template
    virtual = annotations.get("istio.io/reroute-virtual-interfaces") or annotations.get(
        "traffic.sidecar.istio.io/kubevirtInterfaces")
    if virtual:
        at = args.index("-c") if "-c" in args else len(args) - 1
        args[at:at] = ["-k", virtual]
    return args


def inject_pod(meta: dict[str, Any], spec: dict[str, Any], workload: Workload, image: str,
               mesh: MeshSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) of a pod template with the sidecar injected."""
    where = f"{workload.kind}/{workload.namespace}/{workload.name}"
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    labels: dict[str, str] = dict(meta.get("labels") or {})
    proxy_config = _proxy_config(mesh, annotations, where)
    mode = annotations.get(injection.INTERCEPTION_MODE) or str(
        proxy_config.get("interceptionMode") or "REDIRECT")
    if mode not in ("REDIRECT", "TPROXY", "NONE"):
        raise RemoraError(f"{where}: interception mode {mode!r} is not valid",
                          "use REDIRECT or TPROXY")
    tproxy = mode == "TPROXY"
    native = annotations.get("sidecar.istio.io/nativeSidecar", "true") != "false"
    status_port = annotations.get(injection.STATUS_PORT, STATUS_PORT_DEFAULT)
    apps = [c for c in spec.get("containers") or [] if c.get("name") != "istio-proxy"]
    app_names = [str(c.get("name")) for c in apps]
    metadata = proxy_config.get("proxyMetadata") or {}
    resources = _resources(annotations)
    proxy_image = annotations.get("sidecar.istio.io/proxyImage") or image

    init: list[dict[str, Any]] = []
    if mode != "NONE":
        init_container: dict[str, Any] = {
            "name": "istio-init", "image": proxy_image,
            "args": _init_args(meta, mode, where),
            "resources": copy.deepcopy(resources),
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "privileged": False, "readOnlyRootFilesystem": False, "runAsGroup": 0,
                "runAsNonRoot": False, "runAsUser": 0}}
        if metadata:
            init_container["env"] = [{"name": k, "value": str(v)}
                                     for k, v in sorted(metadata.items())]
        init.append(init_container)

    env: list[dict[str, Any]] = [
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
        _field("POD_NAME", "metadata.name"), _field("POD_NAMESPACE", "metadata.namespace"),
        _field("INSTANCE_IP", "status.podIP"),
        _field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field("HOST_IP", "status.hostIP"),
        _resource_field("ISTIO_CPU_LIMIT", "limits.cpu"),
        {"name": "PROXY_CONFIG", "value": json.dumps(proxy_config, separators=(",", ":"))
         + "\n"},
        {"name": "ISTIO_META_POD_PORTS", "value": _pod_ports(apps)},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(app_names)},
        _resource_field("GOMEMLIMIT", "limits.memory"),
        {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
        _field("ISTIO_META_NODE_NAME", "spec.nodeName"),
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": mode},
        {"name": "ISTIO_META_WORKLOAD_NAME",
         "value": labels.get("service.istio.io/workload-name") or workload.name},
        {"name": "ISTIO_META_OWNER",
         "value": f"kubernetes://apis/{workload.api_version}/namespaces/"
                  f"{workload.namespace or 'default'}/{workload.kind.lower()}s/"
                  f"{workload.name}"},
        {"name": "ISTIO_META_MESH_ID", "value": mesh.trust_domain},
        {"name": "TRUST_DOMAIN", "value": mesh.trust_domain},
        *({"name": k, "value": str(v)} for k, v in sorted(metadata.items())),
    ]
    caps: dict[str, Any] = {"drop": ["ALL"]}
    security: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": caps,
                                "privileged": False, "readOnlyRootFilesystem": True}
    if tproxy:
        caps["add"] = ["NET_ADMIN"]
        security.update(runAsGroup=1337, runAsNonRoot=False, runAsUser=0)
    else:
        security.update(runAsGroup=1337, runAsNonRoot=True, runAsUser=1337)
    proxy: dict[str, Any] = {
        "name": "istio-proxy", "image": proxy_image,
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
                 "--proxyLogLevel=" + annotations.get("sidecar.istio.io/logLevel", "warning"),
                 "--proxyComponentLogLevel=" + annotations.get(
                     "sidecar.istio.io/componentLogLevel", "misc:error"),
                 "--log_output_level=" + annotations.get("sidecar.istio.io/agentLogLevel",
                                                         "default:info")],
        "env": env, "securityContext": security, "resources": copy.deepcopy(resources),
        "volumeMounts": [
            {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
            {"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"},
            {"mountPath": "/var/run/secrets/workload-spiffe-credentials",
             "name": "workload-certs"},
            {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
            {"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"},
            {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
            {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
            {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}],
    }
    if native:
        proxy["restartPolicy"] = "Always"
        proxy["lifecycle"] = {"preStop": {"exec": {"command": [
            "pilot-agent", "request", f"--debug-port={status_port}", "POST", "drain"]}}}
    if status_port != "0":
        # kubelet: a probe's initialDelaySeconds of 0 is omitted from the printed object
        proxy["startupProbe"] = {"failureThreshold": 600, "httpGet": {
            "path": "/healthz/ready", "port": 15021}, "periodSeconds": 1, "timeoutSeconds": 3}
        readiness: dict[str, Any] = {
            "failureThreshold": _int(annotations, "readiness.status.sidecar.istio.io/"
                                     "failureThreshold", 4, where),
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "periodSeconds": _int(annotations, "readiness.status.sidecar.istio.io/"
                                  "periodSeconds", 15, where),
            "timeoutSeconds": 3}
        delay = _int(annotations, "readiness.status.sidecar.istio.io/initialDelaySeconds", 0,
                     where)
        if delay:
            readiness["initialDelaySeconds"] = delay
        proxy["readinessProbe"] = readiness

    volumes: list[dict[str, Any]] = [
        {"name": "workload-socket"}, {"name": "credential-socket"}, {"name": "workload-certs"},
        {"emptyDir": {"medium": "Memory"}, "name": "istio-envoy"},
        {"emptyDir": {}, "name": "istio-data"},
        {"downwardAPI": {"items": [
            {"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
            {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"}]},
         "name": "istio-podinfo"},
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
        {"configMap": {"name": "istio-ca-root-cert"}, "name": "istiod-ca-cert"},
        {"configMap": {"name": "istio-ca-crl", "optional": True}, "name": "istio-ca-crl"},
    ]

    # what the template injected, for the status annotation (getInjectionStatus)
    injected_inits = [c["name"] for c in init] + (["istio-proxy"] if native else [])
    status = {"initContainers": injected_inits or None,
              "containers": None if native else ["istio-proxy"],
              "volumes": [v["name"] for v in volumes], "imagePullSecrets": None,
              "revision": "default"}

    out_spec = copy.deepcopy(spec)
    containers = [dict(c) for c in out_spec.get("containers") or []
                  if c.get("name") != "istio-proxy"]
    existing_inits = [dict(c) for c in out_spec.get("initContainers") or []
                      if c.get("name") not in ("istio-init", "istio-proxy")]
    for c in containers + existing_inits:
        c.setdefault("resources", {})  # Go prints the empty struct
    if native:
        # reorderPod: istio-init, then the proxy, then the pod's own init containers
        out_spec["initContainers"] = [*init, proxy, *existing_inits]
        out_spec["containers"] = containers
    else:
        # the proxy last among containers; iptables set up after the pod's init containers
        out_spec["initContainers"] = [*existing_inits, *init]
        out_spec["containers"] = [*containers, proxy]
    if annotations.get("sidecar.istio.io/rewriteAppHTTPProbers", "true").lower() not in (
            "false", "0", "f"):
        # applyRewrite, after the template: every container but the proxy, inits first
        port = int(status_port) if status_port.isdigit() else 15020
        everything = [*out_spec["initContainers"], *out_spec["containers"]]
        probers = rewrite_app_probes(everything, port)
        if probers:
            proxy["env"].append({"name": "ISTIO_KUBE_APP_PROBERS", "value": probers})
    if not out_spec["initContainers"]:
        out_spec.pop("initContainers")
    # the strategic merge of the template puts its volumes first, the pod's after
    names = {v.get("name") for v in volumes}
    out_spec["volumes"] = volumes + [v for v in out_spec.get("volumes") or []
                                     if v.get("name") not in names]

    out_labels = {**labels,
                  "security.istio.io/tlsMode": labels.get("security.istio.io/tlsMode",
                                                          "istio"),
                  "service.istio.io/canonical-name": (
                      labels.get("service.istio.io/canonical-name")
                      or labels.get("app.kubernetes.io/name") or labels.get("app")
                      or workload.name)[:63].strip("-_."),
                  "service.istio.io/canonical-revision": (
                      labels.get("service.istio.io/canonical-revision")
                      or labels.get("app.kubernetes.io/version") or labels.get("version")
                      or "latest")}
    out_annotations = {**annotations, "istio.io/rev": "default"}
    if app_names:
        out_annotations.setdefault("kubectl.kubernetes.io/default-logs-container",
                                   app_names[0])
        out_annotations.setdefault("kubectl.kubernetes.io/default-container", app_names[0])
    if annotations.get("prometheus.io/scrape", "true") != "false":
        # applyPrometheusMerge: Prometheus scrapes the agent, which merges the app's metrics
        out_annotations.update({"prometheus.io/path": "/stats/prometheus",
                                "prometheus.io/port": "15020", "prometheus.io/scrape": "true"})
    out_annotations[injection.STATUS] = json.dumps(status, separators=(",", ":"))
    out_meta = {**copy.deepcopy(meta), "labels": out_labels, "annotations": out_annotations}
    return out_meta, out_spec


def _skip(meta: dict[str, Any], spec: dict[str, Any]) -> bool:
    """kube-inject leaves alone what the injector would not inject."""
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    value = labels.get(injection.INJECT, annotations.get(injection.INJECT, "true"))
    return (str(value).lower() in ("n", "no", "false", "off")
            or injection.STATUS in annotations or bool(spec.get("hostNetwork")))


def inject_object(obj: dict[str, Any], image: str = DEFAULT_IMAGE,
                  mesh: MeshSettings | None = None) -> dict[str, Any]:
    """One manifest object with the sidecar injected into its pod template (objects
    without one, such as Services, come back unchanged)."""
    mesh = mesh or MeshSettings()
    kind = str(obj.get("kind") or "")
    meta = obj.get("metadata") or {}
    workload = Workload(str(meta.get("name") or ""), str(meta.get("namespace") or ""),
                        str(obj.get("apiVersion") or ""), kind)
    out = copy.deepcopy(obj)
    if kind == "List":
        out["items"] = [inject_object(i, image, mesh) if isinstance(i, dict) else i
                        for i in out.get("items") or []]
        out.setdefault("metadata", {})
        return out
    if kind == "Pod":
        holder: dict[str, Any] = out
    elif kind in TEMPLATE_KINDS:
        holder = out.setdefault("spec", {}).setdefault("template", {})
    elif kind == "CronJob":
        holder = out.setdefault("spec", {}).setdefault("jobTemplate", {}).setdefault(
            "spec", {}).setdefault("template", {})
    else:
        return out
    pod_meta, pod_spec = holder.get("metadata") or {}, holder.get("spec") or {}
    if _skip(pod_meta, pod_spec):
        for c in (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or []):
            c.setdefault("resources", {})
    else:
        holder["metadata"], holder["spec"] = inject_pod(pod_meta, pod_spec, workload, image,
                                                        mesh)
    # what Go prints for the kind's zero-valued fields when istioctl writes it back
    for key, value in _ZERO_SPEC.get(kind, {}).items():
        out["spec"].setdefault(key, copy.deepcopy(value))
    out.setdefault("status", dict(_ZERO_STATUS.get(kind, {})))
    return out


def inject_text(text: str, source: str, image: str = DEFAULT_IMAGE,
                mesh: MeshSettings | None = None) -> str:
    """Every document of a YAML stream, injected, as `istioctl kube-inject -f` prints it."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise RemoraError(f"{source}: not YAML: {yaml_problem(exc)}",
                          "give Kubernetes manifests") from None
    if not docs:
        raise RemoraError(f"{source}: no objects", "give a Deployment (or Pod) manifest")
    out = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise RemoraError(f"{source}: a document is not a Kubernetes object",
                              "each YAML document must be one object")
        out.append(yaml.safe_dump(inject_object(doc, image, mesh), sort_keys=True,
                                  default_flow_style=False) + "---\n")
    return "".join(out)
