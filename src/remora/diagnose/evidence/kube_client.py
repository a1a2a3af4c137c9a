"""A cluster through the Kubernetes API, as the user's kubeconfig reaches it (I/O edge).

Built on the official `kubernetes` client rather than plain HTTPS: a real cluster's
kubeconfig often authenticates through what only a full client implements (exec
credential plugins for EKS/GKE/AKS, OIDC refresh, client certificates, proxies), and
pod exec is a WebSocket stream (`v4.channel.k8s.io`) with its own channel framing that the
client already speaks. The import is lazy so every other command works without it.

Only what `explain --kube` and `proxy-config --kube` need: list pods and services, read a
container's log, run a command in a container (pods/exec). Failures are classified
(`Refusal`) so the caller can say which step failed, why, and what to run instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from remora.errors import RemoraError

ERROR_CHANNEL = 3  # the exec stream's status channel (k8s.io/apimachinery remotecommand)


@dataclass(frozen=True)
class ExecResult:
    argv: tuple[str, ...]
    code: int | None  # None: the command never ran (refused, not found, stream failed)
    stdout: str
    stderr: str
    refusal: str = ""  # why it did not run or failed: classify() of what the API said

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.refusal


def classify(status: int | None, text: str, code: int | None = None) -> str:
    """Why an API call or an exec failed, in words a user acts on (empty: it did not).

    - 401/403 (the API, or the exec WebSocket's handshake): credentials or RBAC;
    - exit 126/127, `executable file not found` (containerd/CRI-O's OCI error), `No such
      file or directory` (the lab's `ip netns exec`): the image lacks the command, as
      Istio's distroless proxy image lacks a shell, iptables and curl;
    - iptables' `Permission denied (you must be root)` / `can't initialize`: the container
      runs without root or CAP_NET_ADMIN (istio-proxy in REDIRECT mode runs as 1337).
    """
    low = text.lower()
    if status in (401,) or "401 unauthorized" in low:
        return "unauthorized: the kubeconfig's credentials were refused (401)"
    if status == 403 or "403 forbidden" in low or "forbidden" in low:
        return "forbidden by RBAC (403)"
    if "executable file not found" in low or "no such file or directory" in low \
            or code in (126, 127) or "not found in $path" in low:
        return "not in the container's image (distroless, or the tool is not installed)"
    if "you must be root" in low or "permission denied" in low \
            or "can't initialize" in low or "operation not permitted" in low:
        return "not permitted in the container (not root, or no CAP_NET_ADMIN)"
    if status == 404:
        return "not found (404)"
    if status is not None and status >= 400:
        return f"the API answered {status}"
    return ""


def _exit_code(error_channel: str) -> tuple[int | None, str]:
    """The exec's final Status (channel 3): (exit code, message). Success is 0; a
    NonZeroExitCode names the code in details.causes; other failures (the command did
    not start) carry only a message."""
    if not error_channel.strip():
        return None, ""
    try:
        status = json.loads(error_channel)
    except ValueError:
        return None, error_channel.strip()
    if status.get("status") == "Success":
        return 0, ""
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"]), str(status.get("message") or "")
    return None, str(status.get("message") or "")


def _config_error(kubernetes: Any, kubeconfig: str | None, context: str | None,
                  exc: Exception) -> RemoraError:
    """The kubeconfig problem named as kubectl names it (which file, which context is
    missing and which ones there are), rather than the client library's "Invalid
    kube-config file. No configuration found"."""
    where = kubeconfig or os.path.expanduser("~/.kube/config")
    if not os.path.exists(where):
        return RemoraError(f"cannot use the kubeconfig: {where} does not exist"
                           + ("" if kubeconfig else " and KUBECONFIG is not set"),
                           "set KUBECONFIG (or --kubeconfig) to your cluster's; the lab's is "
                           "`export KUBECONFIG=$(sudo remora kubeconfig)`")
    try:
        contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=where)
    except kubernetes.config.ConfigException:
        contexts = []
    names = [str(c.get("name")) for c in contexts or [] if isinstance(c, dict)]
    if context and names and context not in names:
        # kubectl: `context was not found for specified context: NAME`
        return RemoraError(f"cannot use the kubeconfig {where}: it has no context "
                           f"{context!r} (it has {', '.join(names)})",
                           f"pass --context {names[0]}, or another that "
                           "`kubectl config get-contexts` lists")
    return RemoraError(f"cannot use the kubeconfig {where}: {exc}",
                       "set KUBECONFIG (or --kubeconfig) and --context to a cluster "
                       "`kubectl config get-contexts` lists")


class KubeCluster:
    """The user's cluster (or the lab) through its API, with the kubeconfig's context."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            import kubernetes
        except ImportError:
            raise RemoraError("--kube needs the official Kubernetes Python client, which is "
                              "not installed", "pip install kubernetes") from None
        self._k = kubernetes
        try:
            client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context)
        except kubernetes.config.ConfigException as exc:
            raise _config_error(kubernetes, kubeconfig, context, exc) from None
        self.core = kubernetes.client.CoreV1Api(client)
        self.context = context or ""
        self.server = str(client.configuration.host)

    def _api_error(self, exc: Exception, what: str) -> RemoraError:
        status = getattr(exc, "status", None)
        reason = classify(status, f"{getattr(exc, 'reason', '')} {getattr(exc, 'body', '')}")
        return RemoraError(f"cannot {what} through the Kubernetes API at {self.server}: "
                           f"{reason or exc}",
                           "check `kubectl auth can-i` for it, or the kubeconfig's context")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._k.client.exceptions.ApiException as exc:
            raise self._api_error(exc, what) from None
        except OSError as exc:  # urllib3's connection errors are OSErrors underneath
            raise RemoraError(f"cannot reach the Kubernetes API at {self.server}: {exc}",
                              "is the cluster up? (`kubectl cluster-info`)") from None
        except Exception as exc:  # urllib3 MaxRetryError wraps the refused connection
            if type(exc).__module__.startswith("urllib3"):
                raise RemoraError(f"cannot reach the Kubernetes API at {self.server}: {exc}",
                                  "is the cluster up? (`kubectl cluster-info`)") from None
            raise

    def _list(self, what: str, namespaced: Any, everywhere: Any,
              namespaces: list[str] | None) -> list[dict[str, Any]]:
        """Objects as the API serves them (camelCase JSON, not the client's models)."""
        if namespaces is None:
            items = self._call(f"list {what}", everywhere, _preload_content=False)
            return list(json.loads(items.data)["items"])
        out: list[dict[str, Any]] = []
        for ns in namespaces:
            items = self._call(f"list {what} in namespace {ns}", namespaced, ns,
                               _preload_content=False)
            out.extend(json.loads(items.data)["items"])
        return out

    def pods(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
        return self._list("pods", self.core.list_namespaced_pod,
                          self.core.list_pod_for_all_namespaces, namespaces)

    def services(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
        return self._list("services", self.core.list_namespaced_service,
                          self.core.list_service_for_all_namespaces, namespaces)

    def logs(self, namespace: str, pod: str, container: str, tail: int) -> tuple[str, str]:
        """(text, refusal): the container's recent log, or why it could not be read."""
        try:
            text = self.core.read_namespaced_pod_log(pod, namespace, container=container,
                                                     tail_lines=tail)
        except self._k.client.exceptions.ApiException as exc:
            return "", classify(exc.status, f"{exc.reason} {exc.body}") or str(exc.reason)
        return str(text or ""), ""

    def exec(self, namespace: str, pod: str, container: str, argv: list[str],
             timeout: float = 20.0) -> ExecResult:
        """Run ARGV in the container (pods/exec over WebSocket) and wait for its end."""
        from kubernetes.stream import stream

        try:
            resp = stream(self.core.connect_get_namespaced_pod_exec, pod, namespace,
                          container=container, command=argv, stderr=True, stdin=False,
                          stdout=True, tty=False, _preload_content=False)
        except self._k.client.exceptions.ApiException as exc:
            # the WebSocket handshake's refusal arrives as status 0 with the HTTP status
            # line in the reason ("Handshake status 403 Forbidden ...")
            text = f"{exc.reason} {exc.body or ''}"
            return ExecResult(tuple(argv), None, "", text.strip(),
                              classify(exc.status or None, text) or "exec refused: "
                              + text.strip()[:160])
        stdout: list[str] = []
        stderr: list[str] = []
        error = ""
        try:
            resp.run_forever(timeout=timeout)
            stdout.append(resp.read_stdout() if resp.peek_stdout() else "")
            stderr.append(resp.read_stderr() if resp.peek_stderr() else "")
            error = resp.read_channel(ERROR_CHANNEL)
            timed_out = resp.is_open()
        finally:
            resp.close()
        code, message = _exit_code(error)
        out, err = "".join(stdout), "".join(stderr)
        if timed_out:
            return ExecResult(tuple(argv), None, out, err, f"timed out after {timeout:.0f}s")
        refusal = "" if code == 0 else classify(None, f"{err} {message}", code)
        if code is None and not refusal:
            refusal = f"the exec failed: {message or 'no exit status'}"
        return ExecResult(tuple(argv), code, out, err or message, refusal)
