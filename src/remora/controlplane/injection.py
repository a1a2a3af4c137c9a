"""Sidecar injection as Istio's webhook decides and renders it.

Which pods: Istio's default MutatingWebhookConfiguration has two webhooks
(manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml):
``namespace.sidecar-injector.istio.io`` for namespaces labelled ``istio-injection=enabled``
(skipping pods labelled ``sidecar.istio.io/inject=false``) and
``object.sidecar-injector.istio.io`` for pods labelled ``sidecar.istio.io/inject=true`` in
namespaces without that label. The injector then applies ``injectRequired``
(pkg/kube/inject/inject.go): the pod label, else the legacy annotation
``sidecar.istio.io/inject``, else the policy (enabled).

What it adds: the ``istio-init`` init container and the ``istio-proxy`` container as
manifests/charts/istio-control/istio-discovery/files/injection-template.yaml writes them
(rendered in pkg/kube/inject/testdata/inject/hello.yaml.injected and
hello-tproxy.yaml.injected).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import replace

from remora.errors import RemoraError
from remora.resources.objects import (
    Container,
    ContainerPort,
    EnvVar,
    Namespace,
    ObjectMeta,
    Pod,
)

INJECTION_LABEL = "istio-injection"
INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"
INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
STATUS_PORT = "status.sidecar.istio.io/port"

PROXY_UID = 1337
DEFAULT_HUB = "docker.io/istio"
DEFAULT_TAG = "1.11.3"  # the seed's Istio release
IGNORED_NAMESPACES = ("kube-system", "kube-public")
_TRUE = ("y", "yes", "true", "on")
_FALSE = ("n", "no", "false", "off")


def injection_decision(pod: Pod, namespace: Namespace | None) -> tuple[bool, str]:
    """(inject?, the reason in one phrase) for a pod about to be created."""
    labels = pod.metadata.labels
    ns_label = namespace.metadata.labels.get(INJECTION_LABEL) if namespace else None
    if STATUS in pod.metadata.annotations:
        return False, "already injected (sidecar.istio.io/status is set)"
    if pod.metadata.namespace in IGNORED_NAMESPACES:
        return False, f"namespace {pod.metadata.namespace} is never injected"
    if ns_label == "enabled":
        if labels.get(INJECT) == "false":
            return False, f"pod label {INJECT}=false"
    elif ns_label is None:
        if labels.get(INJECT) != "true":
            return False, (f"namespace {pod.metadata.namespace} has no {INJECTION_LABEL}="
                           f"enabled label and the pod no {INJECT}=true label")
    else:
        return False, f"namespace label {INJECTION_LABEL}={ns_label}"
    if INJECT in labels:
        value, where = labels[INJECT], "label"
    elif INJECT in pod.metadata.annotations:
        value, where = pod.metadata.annotations[INJECT], "annotation"
    else:
        return True, f"namespace label {INJECTION_LABEL}=enabled"
    if value.lower() in _TRUE:
        return True, f"pod {where} {INJECT}={value}"
    if value.lower() in _FALSE:
        return False, f"pod {where} {INJECT}={value}"
    raise RemoraError(f"Pod/{pod.metadata.namespace}/{pod.metadata.name}: {where} {INJECT}: "
                      f"invalid value {value!r}", "use true or false")


def interception_mode(pod: Pod) -> str:
    """REDIRECT (default), TPROXY or NONE, from sidecar.istio.io/interceptionMode."""
    mode = pod.metadata.annotations.get(INTERCEPTION_MODE, "REDIRECT")
    if mode not in ("REDIRECT", "TPROXY", "NONE"):
        raise RemoraError(f"Pod/{pod.metadata.namespace}/{pod.metadata.name}: annotation "
                          f"{INTERCEPTION_MODE}: invalid value {mode!r}",
                          "use REDIRECT or TPROXY")
    return mode


def _check(pod: Pod, key: str, kind: str) -> str | None:
    """The annotation's value after Istio's validation (pkg/kube/inject/validate.go)."""
    value = pod.metadata.annotations.get(key)
    if value is None:
        return None
    where = f"Pod/{pod.metadata.namespace}/{pod.metadata.name}: annotation {key}"
    items = [v.strip() for v in value.split(",") if v.strip()]
    if kind in ("ports", "inports") and not (kind == "inports" and value.strip() == "*"):
        for item in items:
            if not item.isdigit() or not 0 < int(item) < 65536:
                raise RemoraError(f"{where}: {item!r} is not a port", "give ports 1-65535, "
                                  "comma-separated")
    if kind == "cidrs" and value.strip() != "*":
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise RemoraError(f"{where}: {item!r} is not a CIDR",
                                  "give CIDRs such as 10.0.0.0/8, comma-separated") from exc
    return value


def _exclude_inbound_port(status_port: str, excluded: str) -> str:
    """excludeInboundPort() of pkg/kube/inject/template.go: append the status port once."""
    port = status_port.strip()
    if not port or port == "0":
        return excluded
    out = []
    for p in excluded.split(","):
        if p == port:
            return excluded
        if p.strip():
            out.append(p.strip())
    out.append(port)
    return ",".join(out)


def istio_init_args(pod: Pod) -> list[str]:
    """The istio-init container's args, exactly as the injection template renders them.

    ``istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*'
    -d 15090,15021,15020 --log_output_level=default:info`` for a pod without annotations.
    This is also the argv the node runtime runs (through the capture parser).
    """
    mode = interception_mode(pod)
    if mode == "NONE":
        return []
    a = pod.metadata.annotations
    include_ips = _check(pod, INCLUDE_OUTBOUND_IP_RANGES, "cidrs")
    exclude_ips = _check(pod, EXCLUDE_OUTBOUND_IP_RANGES, "cidrs")
    include_in = _check(pod, INCLUDE_INBOUND_PORTS, "inports")
    exclude_in = _check(pod, EXCLUDE_INBOUND_PORTS, "ports")
    args = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", str(PROXY_UID), "-m", mode,
            "-i", "*" if include_ips is None else include_ips,
            "-x", exclude_ips or "",
            "-b", "*" if include_in is None else include_in,
            "-d", "15090,15021," + _exclude_inbound_port(a.get(STATUS_PORT, "15020"),
                                                         exclude_in or "")]
    include_out = _check(pod, INCLUDE_OUTBOUND_PORTS, "ports")
    if include_out is not None:
        args += ["-q", include_out]
    exclude_out = _check(pod, EXCLUDE_OUTBOUND_PORTS, "ports")
    if exclude_out is not None:
        args += ["-o", exclude_out]
    if EXCLUDE_INTERFACES in a:
        args += ["-c", a[EXCLUDE_INTERFACES]]
    args.append("--log_output_level=default:info")
    return args


# meshConfig.defaultConfig.proxyMetadata that Istio's dual-stack install sets (and an
# IPv6 or dual-stack lab passes to inject): istio-iptables reads ISTIO_DUAL_STACK
# (tools/istio-iptables/pkg/cmd/root.go, the --dual-stack flag's env), pilot-agent too.
DUAL_STACK_METADATA = {"ISTIO_DUAL_STACK": "true"}


def _metadata_env(proxy_metadata: Mapping[str, str] | None) -> tuple[EnvVar, ...]:
    """The injection template's `range $key, $value := .ProxyConfig.ProxyMetadata` env."""
    return tuple(EnvVar(name=k, value=str(v)) for k, v in sorted((proxy_metadata or {}).items()))


def _init_container(pod: Pod, image: str,
                    proxy_metadata: Mapping[str, str] | None = None) -> Container:
    return Container(
        name="istio-init", image=image, args=tuple(istio_init_args(pod)),
        env=_metadata_env(proxy_metadata),
        imagePullPolicy="Always",
        securityContext={
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
        })


def _field_env(name: str, path: str) -> EnvVar:
    return EnvVar(name=name, valueFrom={"fieldRef": {"fieldPath": path}})


def _proxy_container(pod: Pod, image: str, mode: str, workload: str,
                     proxy_metadata: Mapping[str, str] | None = None) -> Container:
    tproxy = mode == "TPROXY"
    caps: dict[str, list[str]] = {"drop": ["ALL"]}
    if tproxy:
        caps = {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    ports = [{"name": p.name, "containerPort": p.containerPort}
             for c in pod.spec.containers for p in c.ports]
    env = (
        EnvVar(name="PILOT_CERT_PROVIDER", value="istiod"),
        EnvVar(name="CA_ADDR", value="istiod.istio-system.svc:15012"),
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("HOST_IP", "status.hostIP"),
        EnvVar(name="ISTIO_META_POD_PORTS", value=json.dumps(ports)),
        EnvVar(name="ISTIO_META_APP_CONTAINERS",
               value=",".join(c.name for c in pod.spec.containers)),
        EnvVar(name="ISTIO_META_CLUSTER_ID", value="Kubernetes"),
        EnvVar(name="ISTIO_META_INTERCEPTION_MODE", value=mode),
        EnvVar(name="ISTIO_META_WORKLOAD_NAME", value=workload),
        EnvVar(name="ISTIO_META_MESH_ID", value="cluster.local"),
        EnvVar(name="TRUST_DOMAIN", value="cluster.local"),
        *_metadata_env(proxy_metadata),
    )
    return Container(
        name="istio-proxy", image=image,
        args=("proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
              "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error",
              "--log_output_level=default:info"),
        env=env,
        ports=(ContainerPort(containerPort=15090, name="http-envoy-prom", protocol="TCP"),),
        imagePullPolicy="Always",
        # Envoy's 0.0.0.0_15021 listener answers /healthz/ready (controlplane/health.py)
        readinessProbe={"httpGet": {"path": "/healthz/ready", "port": 15021},
                        "initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 3,
                        "failureThreshold": 30},
        securityContext={
            "allowPrivilegeEscalation": False,
            "capabilities": caps,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": not tproxy,
            "runAsUser": 0 if tproxy else PROXY_UID,
        })


def workload_name(pod: Pod) -> str:
    """The Deployment's name for a pod named NAME-<hash>-<suffix>, else the pod's name."""
    name = pod.metadata.name
    template_hash = pod.metadata.labels.get("pod-template-hash")
    if template_hash and f"-{template_hash}-" in name:
        return name.rsplit(f"-{template_hash}-", 1)[0]
    return name


def inject(pod: Pod, namespace: Namespace | None = None, *, hub: str = DEFAULT_HUB,
           tag: str = DEFAULT_TAG, force: bool = False,
           proxy_metadata: Mapping[str, str] | None = None) -> Pod:
    """The pod as the injector returns it: unchanged when injection does not apply.
    PROXY_METADATA (the mesh's proxyMetadata, e.g. DUAL_STACK_METADATA) becomes env of
    istio-init and istio-proxy, as in Istio's injection template."""
    if not force and not injection_decision(pod, namespace)[0]:
        return pod
    mode = interception_mode(pod)
    image = f"{hub}/proxyv2:{tag}"
    workload = workload_name(pod)
    inits = (_init_container(pod, image, proxy_metadata),) if mode != "NONE" else ()
    app = pod.spec.containers
    status = {"initContainers": [c.name for c in inits], "containers": ["istio-proxy"],
              "volumes": ["istio-envoy", "istio-data", "istio-podinfo", "istio-token",
                          "istiod-ca-cert"], "imagePullSecrets": None}
    annotations = {
        **pod.metadata.annotations,
        "kubectl.kubernetes.io/default-container": app[0].name,
        "kubectl.kubernetes.io/default-logs-container": app[0].name,
        "prometheus.io/path": "/stats/prometheus",
        "prometheus.io/port": "15020",
        "prometheus.io/scrape": "true",
        STATUS: json.dumps(status, separators=(",", ":")),
    }
    labels = {
        **pod.metadata.labels,
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": pod.metadata.labels.get("app", workload),
        "service.istio.io/canonical-revision": pod.metadata.labels.get("version", "latest"),
    }
    meta = ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace,
                      labels=labels, annotations=annotations)
    spec = replace(pod.spec, initContainers=pod.spec.initContainers + inits,
                   containers=(*app, _proxy_container(pod, image, mode, workload,
                                                      proxy_metadata)))
    return Pod(metadata=meta, spec=spec)
