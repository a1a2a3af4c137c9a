"""The daemon's unix-socket API: one JSON request per connection, one JSON reply.

Socket: <state-dir>/node.sock (mode 0600). Request: a JSON object on one line with "op" and
its arguments; reply: one line, {"ok": true, "result": ...} or {"ok": false, "error":
{"problem": ..., "fix": ...}} (a RemoraError, printed by the CLI as usual). Ops:

  ping                                   -> {pid, prefix, nodes, state_dir, podsPerNode,
                                              maxNodes}
  apply   {objects: [k8s objects]}       -> {results: ["service/x created", ...]}
  delete  {kind, namespace, name}        -> {results: [...]}  (a Deployment's pod: replaced)
  get     {kind, namespace?}             -> {items: [...]}    (namespace null = all)
  logs    {namespace, pod, container?, previous?, tail?} -> {text, path}
  exec    {namespace, pod, container?}   -> {argv: ["ip", "netns", "exec", NETNS]}
  pod_metadata {namespace, pod, labels, annotations} -> {labels, annotations}
  nodes                                  -> {items: [{name, index, subnet, gateway, nodeIP}]}
  events                                 -> {items: [core/v1 Event, ...]} (within their TTL)
  managed_fields                         -> {items: [{kind, namespace, name, uid, entries}]}
  put_managed_fields {kind, namespace, name, uid, entries|null} -> {}
                                            (the Kubernetes API's metadata.managedFields)
  down                                   -> {removed: [...]}; the daemon then exits
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from remora.errors import RemoraError, UsageError
from remora.node import controller, desired, ipam, naming, podspec, rollout, views
from remora.node.runtime import Runtime
from remora.node.store import PodRow

MAX_REQUEST = 64 * 1024 * 1024


class Api:
    def __init__(self, runtime: Runtime, on_down: Callable[[], Awaitable[list[str]]]) -> None:
        self.rt = runtime
        self.on_down = on_down

    async def serve(self, path: Path) -> asyncio.AbstractServer:
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._client, path=str(path), limit=MAX_REQUEST)
        os.chmod(path, 0o600)
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line)
            if not isinstance(request, dict):
                raise UsageError("request is not a JSON object", "send {\"op\": ...}")
            op = request.get("op")
            if op == "down":
                reply: dict[str, Any] = {"ok": True, "result": {"removed": await self.on_down()}}
            else:
                result = await asyncio.to_thread(self.handle, request)
                reply = {"ok": True, "result": result}
        except RemoraError as exc:
            reply = {"ok": False, "error": {"problem": exc.problem, "fix": exc.fix}}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": {"problem": f"bad request: {exc!r}",
                                            "fix": "see docs/node.md for the protocol"}}
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        rt = self.rt
        if op == "ping":
            return {"pid": os.getpid(), "prefix": rt.config.prefix, "nodes": rt.config.nodes,
                    "state_dir": str(rt.config.state_dir),
                    "podsPerNode": ipam.pods_per_node(rt.plan),
                    "maxNodes": rt.plan.max_nodes}
        if op == "apply":
            results = desired.apply(rt.store, rt.plan, list(req["objects"]))
            rt.wake.set()
            return {"results": results}
        if op == "delete":
            return {"results": self._delete(req["kind"], req.get("namespace") or "default",
                                            req["name"])}
        if op == "get":
            return {"items": self.get(req["kind"], req.get("namespace"))}
        if op == "logs":
            return self._logs(req)
        if op == "pod_metadata":
            return self._pod_metadata(req)
        if op == "exec":
            row = self._pod(req["namespace"], req["pod"])
            name = self._container(row.body, req.get("container"))
            return {"argv": ["ip", "netns", "exec", row.netns, *self._exec_env(row, name)],
                    "netns": row.netns}
        if op == "events":
            return {"items": rt.events.list()}
        if op == "managed_fields":
            return {"items": [{"kind": k, "namespace": ns, "name": n, "uid": uid,
                               "entries": entries}
                              for k, ns, n, uid, entries in rt.store.managed_fields()]}
        if op == "put_managed_fields":
            entries = req.get("entries")
            rt.store.put_managed_fields(str(req["kind"]), str(req.get("namespace") or ""),
                                        str(req["name"]), str(req.get("uid") or ""),
                                        None if entries is None else list(entries))
            return {}
        if op == "nodes":
            items: list[dict[str, Any]] = []
            for n in rt.nodes:
                item: dict[str, Any] = {"name": n.netns, "index": n.index,
                                        "subnet": str(n.subnet.subnet),
                                        "gateway": str(n.subnet.gateway),
                                        "nodeIP": str(n.subnet.node_ip)}
                if rt.plan.ipv6:  # the node's IPv6 /64, gateway and fabric address
                    item.update(subnet6=str(n.subnet.subnet6),
                                gateway6=str(n.subnet.gateway6),
                                nodeIP6=str(n.subnet.node_ip6))
                items.append(item)
            return {"items": items}
        raise UsageError(f"unknown op {op!r}", "see docs/node.md for the protocol")

    def _delete(self, kind: str, namespace: str, name: str) -> list[str]:
        rt = self.rt
        results = desired.delete(rt.store, kind, namespace, name)
        if kind == "Pod" and not results and rt.store.get_pod(namespace, name) is not None:
            results = [f"pod/{name} deleted"]
        if kind == "Pod" and results:
            rt.mark_deleting(namespace, name)
        if not results:
            raise RemoraError(f"{kind.lower()} {name!r} not found in namespace {namespace!r}",
                              "check the name with `remora get`")
        rt.wake.set()
        return results

    def _pod_metadata(self, req: dict[str, Any]) -> dict[str, Any]:
        """A pod's new labels and annotations (the metadata a pod update may change): on
        the running pod, which `get` and the control plane read, and on a bare pod's
        desired object, so both stay in step."""
        row = self._pod(req["namespace"], req["pod"])
        body = json.loads(json.dumps(row.body))
        wanted = body if row.owner_kind else self.rt.store.get_object(
            "Pod", row.namespace, row.name)
        for key in ("labels", "annotations"):
            value = {str(k): str(v) for k, v in dict(req.get(key) or {}).items()}
            for obj in (body, wanted):
                if obj is None:
                    continue
                if value:
                    obj["metadata"][key] = value
                else:
                    obj["metadata"].pop(key, None)
        if wanted is not None and wanted is not body:
            self.rt.store.put_object(desired.normalise(wanted))
        self.rt.store.update_pod(row.uid, body=body)
        self.rt.wake.set()
        return {"labels": body["metadata"].get("labels") or {},
                "annotations": body["metadata"].get("annotations") or {}}

    def get(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        rt = self.rt
        if kind == "Pod":
            pods = views.pod_objects(rt.store, rt.nodes, namespace)
            since = rt.ready_times()
            for p in pods:
                # when the controller saw it become Ready, for a ReplicaSet's
                # availableReplicas under minReadySeconds (remora.kubeapi.views)
                if p["metadata"]["uid"] in since:
                    p["remora"]["readySince"] = since[p["metadata"]["uid"]]
            return pods
        if kind == "Service":
            items = views.services(rt.store, rt.plan)
        elif kind == "Deployment":
            items = self._deployments()
        elif kind in desired.POLICY_KINDS:
            items = rt.store.list_objects(kind)
        elif kind == "Namespace":
            named = {n["metadata"]["name"]: n for n in rt.store.list_objects("Namespace")}
            for n in named.values():
                # the apiserver keeps no metadata.generation for a Namespace (its strategy
                # does not set one); the store counts spec changes for every kind
                n["metadata"].pop("generation", None)
            # default, kube-system, kube-public and kube-node-lease always exist in a
            # cluster (kube-apiserver's system namespaces controller), and the lab's
            # namespaces of objects with no Namespace object (the store's) too: created
            # with the lab
            created = rt.store.get_meta("created")
            implied = [o["metadata"]["namespace"] for k in desired.NAMESPACED
                       for o in rt.store.list_objects(k)]
            for name in [*desired.BUILTIN_NAMESPACES, *implied]:
                named.setdefault(name, {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": name,
                                                     "creationTimestamp": created}})
            return [named[k] for k in sorted(named)]
        else:
            raise UsageError(f"kind {kind!r} is not known to the node",
                             f"use one of {desired.KINDS}")
        return [o for o in items if namespace is None or o["metadata"]["namespace"] == namespace]

    def _deployments(self) -> list[dict[str, Any]]:
        rt = self.rt
        pods = views.pod_objects(rt.store, rt.nodes)
        rows = {(r.namespace, r.name): r for r in rt.store.list_pods()}
        out = []
        for d in rt.store.list_objects("Deployment"):
            ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
            current = controller.template_hash(d)
            owned = [p for p in pods if (r := rows.get((ns, p["metadata"]["name"])))
                     and r.owner_kind == "Deployment" and r.owner_name == name and not r.deleting]
            # a pod is available once Ready for minReadySeconds, from when the runtime's
            # controller saw it become Ready (podutil.IsPodAvailable)
            min_ready = controller.min_ready_seconds(d)
            since = rt.ready_times()
            now = time.time()
            n_available = sum(1 for p in owned if p["status"]["ready"] and (
                min_ready == 0 or controller.available(
                    since.get(p["metadata"]["uid"]), min_ready, now)))
            d["status"] = {"observedGeneration": d["metadata"]["generation"],
                           **rollout.counts([(rows[(ns, p["metadata"]["name"])].template_hash,
                                              bool(p["status"]["ready"])) for p in owned],
                                            current, n_available)}
            # the conditions as the node's deployment controller last set them
            kept = rt.store.get_meta(desired.rollout_key(ns, name))
            uid = naming.object_uid("Deployment", ns, name, d["metadata"].get(
                "creationTimestamp"))
            if isinstance(kept, dict) and kept.get("uid") == uid:
                d["status"]["conditions"] = rollout.served(kept.get("status") or {})
            # its numbered templates, for the Kubernetes API's ReplicaSets (rollout
            # history|undo); the node's own block, not served as a field
            d["remora"] = {"revisions": desired.revisions(rt.store, ns, name)}
            out.append(d)
        return out

    def _pod(self, namespace: str, name: str) -> Any:
        row = self.rt.store.get_pod(namespace, name)
        if row is None:
            raise RemoraError(f"pod {name!r} not found in namespace {namespace!r}",
                              f"list pods with `remora get pods -n {namespace}`")
        return row

    def _exec_env(self, row: PodRow, container: str) -> list[str]:
        """``env -i`` and the container's own environment, as kubelet execs a command in a
        container (its env, HOSTNAME the pod's name; podspec.environment, what its process
        was started with), not the environment of whoever asked (the API server's or the
        CLI's: REMORA_STATE_DIR and the like)."""
        spec = row.body.get("spec", {})
        found = [c for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
                 if c.get("name") == container]
        node = next((n.netns for n in self.rt.nodes if n.index == row.node), "")
        pod_ip = str((row.body.get("status") or {}).get("podIP") or "")
        env = podspec.environment(row.body, found[0] if found else {}, pod_ip, node)
        return ["env", "-i", *(f"{k}={v}" for k, v in env.items())]

    @staticmethod
    def _container(pod: dict[str, Any], name: str | None) -> str:
        names = [c["name"] for c in pod.get("spec", {}).get("containers") or []]
        inits = [c["name"] for c in pod.get("spec", {}).get("initContainers") or []]
        if name is None:
            if not names:
                raise RemoraError("pod has no containers", "apply a pod with containers")
            return str(names[0])
        if name not in names + inits:
            raise RemoraError(f"container {name!r} is not valid for pod "
                              f"{pod['metadata']['name']}",
                              f"choose one of: {' '.join(names + inits)}")
        return name

    def _logs(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._pod(req["namespace"], req["pod"])
        container = self._container(row.body, req.get("container"))
        path = self.rt.supervisor.log_path(self.rt.pod_ref(row), container,
                                           bool(req.get("previous")))
        text = path.read_text(errors="replace") if path.exists() else ""
        tail = req.get("tail")
        if tail is not None and int(tail) >= 0:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - int(tail):]) if int(tail) else ""
        return {"text": text, "path": str(path), "container": container}
