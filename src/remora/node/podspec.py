"""Reading a pod's container spec the way kubelet does (pure).

Command and args (no image entrypoint exists here: a container without a command needs a
PodSetup that maps its image), env with `value` and the downward API `fieldRef`s Istio's
injected sidecar uses, securityContext runAsUser/runAsGroup/capabilities (the sidecar's
1337, or 0 + NET_ADMIN in TPROXY mode), workingDir, and the readiness, liveness and
startup probes (tcpSocket, httpGet, exec) that remora.node.probes runs as kubelet does.
"""

from __future__ import annotations

import os
from typing import Any

from remora.errors import RemoraError
from remora.node.probes import Probe
from remora.node.process import ProcessSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _pod_ref(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata", {})
    return f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def field_ref(pod: dict[str, Any], path: str, pod_ip: str, node_name: str) -> str:
    meta = pod.get("metadata", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node_name,
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": pod_ip,
    }
    if path in simple:
        return str(simple[path])
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(meta.get(source, {}).get(path[len(prefix) + 2:-2], ""))
    return ""


def environment(pod: dict[str, Any], container: dict[str, Any], pod_ip: str,
                node_name: str) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": pod["metadata"]["name"]}
    for name in ("LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV"):
        if name in os.environ:
            env[name] = os.environ[name]
    # The interpreter running remora must stay reachable for `remora ...` commands.
    env["PATH"] = os.pathsep.join(dict.fromkeys(
        [*os.environ.get("PATH", "").split(os.pathsep), *DEFAULT_PATH.split(os.pathsep)]))
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if "value" in item:
            env[name] = str(item["value"])
        elif "fieldRef" in (item.get("valueFrom") or {}):
            env[name] = field_ref(pod, item["valueFrom"]["fieldRef"].get("fieldPath", ""),
                                  pod_ip, node_name)
        elif "resourceFieldRef" in (item.get("valueFrom") or {}):
            env[name] = "0"
    return env


def _security(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    own = (container.get("securityContext") or {}).get(key)
    if own is not None:
        return own
    return (pod.get("spec", {}).get("securityContext") or {}).get(key)


def ready_port(container: dict[str, Any], kind: str = "readinessProbe") -> int | None:
    """The port of the container's KIND probe (tcpSocket or httpGet), None without one."""
    probe = container.get(kind) or {}
    action = probe.get("tcpSocket") or probe.get("httpGet")
    if not action or "port" not in action:
        return None
    port = action["port"]
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def probe(container: dict[str, Any], pod_ip: str, kind: str = "readinessProbe",
          env: dict[str, str] | None = None) -> Probe | None:
    """The container's KIND probe (readinessProbe, livenessProbe, startupProbe) with the
    apiserver's defaults (periodSeconds 10, timeoutSeconds 1, successThreshold 1,
    failureThreshold 3); None without one, or with a port that names no container port
    (kubelet fails such a probe; the lab leaves it out). ENV is the container's
    environment, an exec probe's (kubelet execs it in the container)."""
    spec = container.get(kind) or {}
    period, delay = float(spec.get("periodSeconds") or 10), \
        float(spec.get("initialDelaySeconds") or 0)
    timeout = float(spec.get("timeoutSeconds") or 1)
    success, failure = int(spec.get("successThreshold") or 1), \
        int(spec.get("failureThreshold") or 3)
    if "exec" in spec:
        command = tuple(str(c) for c in (spec["exec"] or {}).get("command") or [])
        return Probe("exec", command=command, env=dict(env or {}), period=period, delay=delay,
                     timeout=timeout, success=success, failure=failure)
    port = ready_port(container, kind)
    if port is None:
        return None
    action = spec.get("httpGet") or spec.get("tcpSocket") or {}
    headers = tuple((str(h.get("name", "")), str(h.get("value", "")))
                    for h in action.get("httpHeaders") or [] if h.get("name"))
    return Probe("httpGet" if "httpGet" in spec else "tcpSocket", port=port,
                 host=str(action.get("host") or ""), pod_ip=pod_ip,
                 path=str(action.get("path") or ""), scheme=str(action.get("scheme") or "HTTP"),
                 headers=headers, period=period, delay=delay, timeout=timeout, success=success,
                 failure=failure)


def probe_target(container: dict[str, Any], pod_ip: str, kind: str = "readinessProbe") -> str:
    """The start of kubelet's prober's failure text for the container's KIND probe when
    its connection fails: Go's `dial tcp HOST:PORT` (the probe's host, else the pod's IP:
    pkg/kubelet/prober/prober.go runProbe), after `Get "URL": ` for httpGet (net/http's
    client error around the dial, the URL as formatURL makes it); "" for exec or no
    probe."""
    found = probe(container, pod_ip, kind)
    return "" if found is None else found.target


def process_spec(pod: dict[str, Any], container: dict[str, Any], pod_ip: str,
                 node_name: str = "") -> ProcessSpec:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not container.get("command"):
        raise RemoraError(
            f"{_pod_ref(pod)}: container {container.get('name')!r} (image "
            f"{container.get('image')!r}) has no command, and images cannot be pulled here",
            "give the container a command, or map its image to a local command")
    caps = ((container.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
    uid, gid = _security(pod, container, "runAsUser"), _security(pod, container, "runAsGroup")
    env = environment(pod, container, pod_ip, node_name)
    return ProcessSpec(
        argv=argv,
        env=env,
        uid=None if uid is None else int(uid),
        gid=None if gid is None else int(gid),
        caps=tuple(str(c).lower().removeprefix("cap_") for c in caps),
        cwd=container.get("workingDir") or "/",
        readiness=probe(container, pod_ip, "readinessProbe", env),
        liveness=probe(container, pod_ip, "livenessProbe", env),
        startup=probe(container, pod_ip, "startupProbe", env),
    )
