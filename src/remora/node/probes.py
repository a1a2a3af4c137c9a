"""One run of a container probe, as kubelet's prober runs it (thread-safe, blocking).

kubelet (pkg/kubelet/prober/prober.go runProbe) runs one of three actions with the probe's
timeoutSeconds and turns the result into Success, Warning (a success with a ProbeWarning
event) or Failure with the text that follows "<Kind> probe failed: " in its Unhealthy
event:

- tcpSocket (pkg/probe/tcp): a connect; Go's dial error on failure
  ("dial tcp 10.20.0.3:1: connect: connection refused", "... i/o timeout").
- httpGet (pkg/probe/http, request.go): GET scheme://host:port/path with httpHeaders,
  User-Agent "kube-probe/1.32" and Accept "*/*" unless given, no keep-alive; 200-399 is
  success, otherwise "HTTP probe failed with statuscode: N"; redirects are followed only
  to the same host (RedirectChecker(followNonLocalRedirects=false)), at most 10; one to
  another host ends at the 3xx, a Warning "Probe terminated redirects, Response body: ...".
- exec (pkg/probe/exec): the command in the container, as the lab runs `kubectl exec`
  (`ip netns exec NETNS env -i ENV... CMD`); exit 0 is success, otherwise the command's
  combined output is the message; past the timeout, `command "..." timed out`.

The probe runs inside the pod's network namespace. Without a host it dials 127.0.0.1
there (kubelet dials the pod's IP from the node; the pod's capture leaves loopback
traffic of uid != 1337 alone either way) but reports, and sends as Host, the pod's IP as
kubelet does.
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from enum import Enum

from remora import netns

USER_AGENT = "kube-probe/1.32"  # request.go userAgent("probe"): the lab is Kubernetes 1.32
MAX_BODY = 10 * 1024  # http.go maxRespBodyLength
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class Probe:
    """One probe of a container, with the apiserver's defaults (periodSeconds 10,
    timeoutSeconds 1, successThreshold 1, failureThreshold 3)."""

    action: str  # "tcpSocket", "httpGet" or "exec"
    port: int | None = None
    host: str = ""  # the probe's host field; "" is the pod's IP
    pod_ip: str = ""
    path: str = ""
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    period: float = 10.0
    delay: float = 0.0
    timeout: float = 1.0
    success: int = 1
    failure: int = 3
    env: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def address(self) -> str:
        """HOST:PORT as Go's net.JoinHostPort writes it (the pod's IP without a host)."""
        host = self.host or self.pod_ip
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL kubelet's formatURL makes of an httpGet probe."""
        path = self.path if not self.path or self.path.startswith("/") else "/" + self.path
        return f"{self.scheme.lower()}://{self.address}{path}"

    @property
    def target(self) -> str:
        """The start of the failure text when the connection fails: Go's `dial tcp
        HOST:PORT`, after `Get "URL": ` for httpGet; "" for exec."""
        if self.action == "exec" or self.port is None:
            return ""
        dial = f"dial tcp {self.address}"
        return f'Get "{self.url}": {dial}' if self.action == "httpGet" else dial


class Outcome(Enum):
    SUCCESS = "Success"
    WARNING = "Warning"  # kubelet: a success, with a `ProbeWarning` event
    FAILURE = "Failure"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.FAILURE


def run(probe: Probe, netns_name: str | None) -> Result:
    """Run PROBE once in the pod's network namespace NETNS_NAME (None: the caller's own,
    for tests); never raises."""
    try:
        if probe.action == "exec":
            return _exec(probe, netns_name)
        if probe.action == "httpGet":
            return _http(probe, netns_name)
        return _tcp(probe, netns_name)
    except Exception as exc:  # a probe that cannot even run is a failed probe (prober.go)
        return Result(Outcome.FAILURE, f"{type(exc).__name__}: {exc}")


def _dial_host(probe: Probe) -> str:
    return probe.host or "127.0.0.1"


def _go_errno(code: int) -> str:
    """Go's text for a failed connect: `connect: connection refused`, `i/o timeout`."""
    if code in (errno.EAGAIN, errno.EINPROGRESS, errno.ETIMEDOUT):
        return "i/o timeout"
    text = os.strerror(code)
    return f"connect: {text[:1].lower()}{text[1:]}"


def _connect(netns_name: str | None, host: str, port: int, timeout: float) -> socket.socket:
    """A socket of the pod's namespace connected to HOST:PORT within TIMEOUT; OSError
    (errno set, ETIMEDOUT for the timeout) if not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = netns.socket_in(netns.resolve(netns_name) if netns_name else None, family)
    sock.settimeout(max(timeout, 0.001))
    try:
        sock.connect((host, port))
    except TimeoutError:
        sock.close()
        raise OSError(errno.ETIMEDOUT, "i/o timeout") from None
    except OSError:
        sock.close()
        raise
    return sock


def _tcp(probe: Probe, netns_name: str | None) -> Result:
    assert probe.port is not None
    try:
        _connect(netns_name, _dial_host(probe), probe.port, probe.timeout).close()
    except OSError as exc:
        return Result(Outcome.FAILURE, f"{probe.target}: {_go_errno(exc.errno or errno.EIO)}")
    return Result(Outcome.SUCCESS)


def _request_headers(probe: Probe, host: str) -> list[tuple[str, str]]:
    """request.go newProbeRequest: the probe's headers; User-Agent and Accept added when
    absent, an Accept given empty dropped; HOST is the Host header's value."""
    given = {k.lower(): v for k, v in probe.headers}
    out = [("Host", host)]
    out.append(("User-Agent", given.get("user-agent", USER_AGENT)))
    if "accept" not in given:
        out.append(("Accept", "*/*"))
    elif given["accept"]:
        out.append(("Accept", given["accept"]))
    out += [(k, v) for k, v in probe.headers
            if k.lower() not in ("host", "user-agent", "accept")]
    out.append(("Connection", "close"))  # the prober's transport: DisableKeepAlives
    return out


def _http(probe: Probe, netns_name: str | None) -> Result:
    assert probe.port is not None
    deadline = time.monotonic() + probe.timeout
    url = urllib.parse.urlsplit(probe.url)
    first_host = url.hostname
    dial_host, dial_port = _dial_host(probe), probe.port
    given_host = next((v for k, v in probe.headers if k.lower() == "host"), "")
    host_header = given_host or probe.address
    referer = ""
    for hop in range(MAX_REDIRECTS):
        where = urllib.parse.urlunsplit(url)
        target = url.path or "/"
        if url.query:
            target += "?" + url.query
        try:
            sock = _connect(netns_name, dial_host, dial_port, deadline - time.monotonic())
        except OSError as exc:
            code = exc.errno or errno.EIO
            reason = _go_errno(code)
            if reason == "i/o timeout":
                reason += " (Client.Timeout exceeded while awaiting headers)"
            return Result(Outcome.FAILURE,
                          f'Get "{where}": dial tcp {_join(url)}: {reason}')
        try:
            if url.scheme == "https":
                # kubelet's probe transport skips verification (InsecureSkipVerify)
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname=url.hostname)
            headers = _request_headers(probe, host_header)
            if referer:
                headers.insert(-1, ("Referer", referer))
            status, location, body = _exchange(sock, target, headers, deadline)
        except TimeoutError:
            return Result(Outcome.FAILURE, f'Get "{where}": context deadline exceeded '
                                           "(Client.Timeout exceeded while awaiting headers)")
        except (OSError, http.client.HTTPException) as exc:
            return Result(Outcome.FAILURE, f'Get "{where}": {_go_read_error(exc)}')
        finally:
            sock.close()
        if status in (301, 302, 303, 307, 308) and location:
            nxt = urllib.parse.urlsplit(urllib.parse.urljoin(where, location))
            if nxt.hostname == first_host and nxt.scheme in ("http", "https"):
                if hop + 1 >= MAX_REDIRECTS:  # Go's checker: len(via) >= 10
                    # net/http Client.do puts the Location as given into the url.Error
                    return Result(Outcome.FAILURE,
                                  f'Get "{location}": stopped after 10 redirects')
                # Go keeps a Host header the caller set only through a relative redirect
                if urllib.parse.urlsplit(location).netloc or not given_host:
                    host_header = nxt.netloc
                dial_port = nxt.port or (443 if nxt.scheme == "https" else 80)
                referer = where  # Go's Client adds Referer to a redirect's request
                url = nxt
                continue
        if 200 <= status < 400:
            if status >= 300:
                return Result(Outcome.WARNING,
                              f"Probe terminated redirects, Response body: {body}")
            return Result(Outcome.SUCCESS, body)
        return Result(Outcome.FAILURE, f"HTTP probe failed with statuscode: {status}")
    raise AssertionError("unreachable")


def _join(url: urllib.parse.SplitResult) -> str:
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _go_read_error(exc: Exception) -> str:
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected)):
        return "EOF"
    if isinstance(exc, http.client.BadStatusLine):
        return f"net/http: HTTP/1.x transport connection broken: malformed HTTP response {exc}"
    return str(exc)


def _exchange(sock: socket.socket, target: str, headers: list[tuple[str, str]],
              deadline: float) -> tuple[int, str, str]:
    """Send the GET, read the status, Location and up to MAX_BODY of the body."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    sock.sendall((head + "\r\n").encode("latin-1"))
    resp = http.client.HTTPResponse(sock, method="GET")
    resp.begin()
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    body = resp.read(MAX_BODY)
    return resp.status, resp.getheader("Location") or "", body.decode(errors="replace")


def _exec(probe: Probe, netns_name: str | None) -> Result:
    """The command in the container the way the lab's `kubectl exec` runs it (the node
    API's exec op: `ip netns exec NETNS env -i ENV... CMD`)."""
    argv = ["env", "-i", *(f"{k}={v}" for k, v in probe.env.items()), *probe.command]
    if netns_name:
        argv = ["ip", "netns", "exec", netns_name, *argv]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=probe.timeout, check=False)
    except subprocess.TimeoutExpired:
        # exec.go with ExecProbeTimeout (GA): the TimeoutError's text, Go's %q of the command
        return Result(Outcome.FAILURE, f'command "{" ".join(probe.command)}" timed out')
    if done.returncode == 0:
        return Result(Outcome.SUCCESS, done.stdout.decode(errors="replace"))
    return Result(Outcome.FAILURE, done.stdout.decode(errors="replace"))
