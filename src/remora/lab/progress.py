"""Waiting for the lab to settle, with progress lines while pods start.

kubectl has `rollout status` and `wait --for=condition=Ready`; `remora up --wait`, `apply
--wait` and the demo need both at once: every Deployment in the namespaces has its
desired number of up-to-date, Ready pods and no old ones left, and every bare Pod is
Ready. While waiting, a line is printed each time a pod's READY/STATUS changes, so a
pod stuck at `Init:Error` shows itself long before the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from remora.errors import RemoraError
from remora.lab.tables import ready_column
from remora.node.client import NodeClient

Echo = Callable[[str], None]
BAD = ("Error", "CrashLoopBackOff", "CreateContainerConfigError", "Init:Error",
       "Init:CrashLoopBackOff")


def _desired(d: dict[str, Any]) -> int:
    value = d.get("spec", {}).get("replicas")
    return 1 if value is None else int(value)


def rollout_message(d: dict[str, Any]) -> tuple[bool, str]:
    """kubectl rollout status's message for a Deployment (kubectl/pkg/polymorphichelpers/
    rollout_status.go), and whether the rollout is complete."""
    name = d["metadata"]["name"]
    st = d.get("status", {})
    want = _desired(d)
    updated, total = st.get("updatedReplicas", 0), st.get("replicas", 0)
    available = st.get("availableReplicas", 0)
    prefix = f'Waiting for deployment "{name}" rollout to finish: '
    if updated < want:
        return False, prefix + f"{updated} out of {want} new replicas have been updated..."
    if total > updated:
        return False, prefix + f"{total - updated} old replicas are pending termination..."
    if available < updated:
        return False, prefix + f"{available} of {updated} updated replicas are available..."
    return True, f'deployment "{name}" successfully rolled out'


def progress_deadline_exceeded(d: dict[str, Any]) -> bool:
    """The Progressing condition the deployment controller sets False when a rollout
    made no progress for progressDeadlineSeconds (remora.node.rollout), which kubectl
    rollout status reports as an error before anything else."""
    return any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
               for c in (d.get("status") or {}).get("conditions") or [])


def _pod_line(p: dict[str, Any]) -> str:
    r = p.get("remora", {})
    ip = p.get("status", {}).get("podIP") or "-"
    return (f"  {p['metadata'].get('namespace', 'default')}/{p['metadata']['name']}  "
            f"{ready_column(p)}  {r.get('status', '')}  {ip}")


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]


def _owner(pod: dict[str, Any]) -> str | None:
    owner = (pod["metadata"].get("ownerReferences") or [{}])[0]
    return str(owner["name"]) if owner.get("kind") == "Deployment" and "name" in owner \
        else None


def settled(client: NodeClient, namespaces: list[str] | None,
            expect: list[tuple[str, str]] | None = None,
            deployments: list[tuple[str, str]] | None = None,
            ) -> tuple[bool, list[dict[str, Any]], list[str]]:
    """DEPLOYMENTS (namespace, name), when given with EXPECT: only those Deployments and
    their pods, and the pods EXPECT names, are waited on (a batch's own objects: another
    pod crashing in the same namespace is none of this batch's business, as `kubectl
    wait` and `rollout status` look only at what they are given)."""
    pods = client.get("Pod")
    deps = client.get("Deployment")
    if namespaces is not None:
        pods = [p for p in pods if p["metadata"]["namespace"] in namespaces]
        deps = [d for d in deps if d["metadata"]["namespace"] in namespaces]
    if deployments is not None:
        mine, bare = set(deployments), set(expect or [])
        deps = [d for d in deps if _key(d) in mine]
        pods = [p for p in pods if _key(p) in bare
                or (_key(p)[0], _owner(p)) in mine]
    waiting = [msg for done, msg in map(rollout_message, deps) if not done]
    for p in pods:
        owned = p["metadata"].get("ownerReferences")
        if not owned and not p["status"].get("ready"):
            waiting.append(f"pod {p['metadata']['name']} is not Ready")
    present = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
    waiting += [f"pod {ns}/{name} is not created yet" for ns, name in expect
                if (ns, name) not in present] if expect else []
    terminating = [p for p in pods if "deletionTimestamp" in p["metadata"]]
    waiting += [f"pod {p['metadata']['name']} is terminating" for p in terminating]
    return not waiting, pods, waiting


def crashing(pods: list[dict[str, Any]], restarts: int = 2) -> tuple[str, str, str] | None:
    """(namespace, pod, container) of a container that failed RESTARTS times: kubelet
    would keep restarting it, but waiting longer will not make it Ready."""
    for p in pods:
        if "deletionTimestamp" in p["metadata"]:
            continue
        st = p.get("status", {})
        for c in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            finished = (c.get("state") or {}).get("terminated", {}).get("exitCode") == 0
            if c.get("restartCount", 0) >= restarts and not c.get("ready") and not finished:
                return p["metadata"]["namespace"], p["metadata"]["name"], c["name"]
    return None


def _crash_line(client: NodeClient, ns: str, name: str, container: str) -> str:
    """The line that says why CONTAINER fails. The node moves a container's log aside as
    it restarts it, so the current log may be a new run that has printed nothing yet; the
    previous run's log (`logs --previous`) is complete, its process having exited."""
    runs = [str(client.logs(ns, name, container, previous=previous, tail=5)["text"])
            .strip().splitlines() for previous in (False, True)]
    for tail in runs:
        found = next((line for line in reversed(tail) if "error" in line.lower()), None)
        if found is not None:
            return found
    return next((tail[-1] for tail in runs if tail), "no output")


def summarize(states: list[tuple[str, str]], examples: int = 2) -> str:
    """(pod, state) pairs as one short line: each distinct state once, with how many pods
    are in it and a few of their names (`249 pods Pending (node 1 has no free pod address
    ...), e.g. web-1, web-2`), not one entry per pod."""
    groups: dict[str, list[str]] = {}
    for name, state in states:
        groups.setdefault(state, []).append(name)
    parts = []
    for state, names in sorted(groups.items(), key=lambda g: -len(g[1])):
        if len(names) == 1:
            parts.append(f"{names[0]} {state}")
        else:
            more = ", ..." if len(names) > examples else ""
            parts.append(f"{len(names)} pods {state}, e.g. {', '.join(names[:examples])}{more}")
    return "; ".join(parts)


def first_of(lines: list[str], shown: int = 3) -> str:
    """The first SHOWN lines and how many more."""
    more = f"; and {len(lines) - shown} more" if len(lines) > shown else ""
    return "; ".join(lines[:shown]) + more


# How long a settled state must hold before a wait says so. A container without a
# readiness probe is ready as soon as it runs (as in kubelet), so a container that dies
# a moment after it starts (a port another container holds: EADDRINUSE) would make the
# pod Ready for that moment. kubelet would most likely never report it: its PLEG relists
# containers every second (pkg/kubelet/pleg/generic.go relistPeriod), and the status
# manager reports what it saw then. So: ready, and still ready with the same restart
# counts a second later.
STABLE_FOR = 1.0


def _restarts(pods: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {_key(p): sum(int(c.get("restartCount") or 0) for c in
                         (p.get("status", {}).get("containerStatuses") or []))
            for p in pods}


def wait(client: NodeClient, namespaces: list[str] | None, timeout: float,
         echo: Echo | None = None, expect: list[tuple[str, str]] | None = None,
         deployments: list[tuple[str, str]] | None = None,
         ) -> list[dict[str, Any]]:
    """Block until the namespaces (or, with DEPLOYMENTS, the batch's objects: see
    ``settled``) settle and stay so for STABLE_FOR; returns their pods. Raises on
    timeout."""
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    since: tuple[float, dict[tuple[str, str], int]] | None = None
    while True:
        done, pods, waiting = settled(client, namespaces, expect or [], deployments)
        if done:
            counts = _restarts(pods)
            if since is None or since[1] != counts:
                since = (time.monotonic(), counts)
            if time.monotonic() - since[0] < STABLE_FOR:
                done = False
        else:
            since = None
        if echo is not None:
            for p in pods:
                line = _pod_line(p)
                if shown.get(p["metadata"]["name"]) != line:
                    shown[p["metadata"]["name"]] = line
                    echo(line)
        if done:
            return [p for p in pods if "deletionTimestamp" not in p["metadata"]]
        failing = crashing(pods)
        if failing:
            ns, name, container = failing
            last = _crash_line(client, ns, name, container)
            raise RemoraError(f"pod {ns}/{name}: container {container} keeps failing: "
                              f"{last.strip()}",
                              f"see `remora logs {name} -n {ns} -c {container} --previous` "
                              f"and `remora describe pod {name} -n {ns}`")
        if time.monotonic() > deadline:
            bad = [p for p in pods if p.get("remora", {}).get("status") in BAD
                   or p["status"].get("message")]
            detail = summarize([(p["metadata"]["name"], p["remora"]["status"]
                                 + (f" ({p['status']['message']})"
                                    if p["status"].get("message") else "")) for p in bad]) \
                or first_of(waiting)
            first = bad[0]["metadata"] if bad else None
            fix = (f"see `remora describe pod {first['name']} -n {first['namespace']}` and "
                   f"`remora logs {first['name']} -n {first['namespace']} -c istio-init`"
                   if first else "look at `remora get pods -A` and `remora logs`")
            raise RemoraError(f"not Ready after {timeout:.0f}s: {detail}", fix)
        time.sleep(0.2)


def rollout(client: NodeClient, namespace: str, name: str, timeout: float,
            echo: Echo) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        found = [d for d in client.get("Deployment", namespace) if d["metadata"]["name"] == name]
        if not found:
            raise RemoraError(f'deployment "{name}" not found in namespace {namespace!r}',
                              f"list them with `remora get deploy -n {namespace}`")
        if progress_deadline_exceeded(found[0]):
            # kubectl's first check: `error: deployment "x" exceeded its progress deadline`
            raise RemoraError(f'deployment "{name}" exceeded its progress deadline',
                              f"see `remora describe deploy {name} -n {namespace}` (its "
                              f"Conditions) and `remora get pods -n {namespace}`")
        done, message = rollout_message(found[0])
        terminating = [p for p in client.get("Pod", namespace)
                       if "deletionTimestamp" in p["metadata"]
                       and (p["metadata"].get("ownerReferences") or [{}])[0].get("name") == name]
        if done and terminating:
            done, message = False, (f'Waiting for deployment "{name}" rollout to finish: '
                                    f"{len(terminating)} old replicas are pending termination...")
        if message != last:
            echo(message)
            last = message
        if done:
            return
        if time.monotonic() > deadline:
            raise RemoraError(f'deployment "{name}" rollout did not finish in {timeout:.0f}s',
                              f"see `remora get pods -n {namespace}` and `remora describe "
                              f"deploy {name} -n {namespace}`")
        time.sleep(0.2)
