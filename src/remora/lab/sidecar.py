"""The sidecar's process: `remora proxy` (default) or a real Envoy, on the same files.

Istio runs the sidecar as uid 1337 / gid 1337 (REDIRECT), or uid 0 / gid 1337 with
CAP_NET_ADMIN (TPROXY, so original_src can bind a foreign address); the injected
container's securityContext says which, and the node runtime applies it with setpriv.
The capture rules let the sidecar's own traffic out by `--uid-owner 1337` *or*
`--gid-owner 1337` (docs/capture.md), so when uid 1337 cannot even start the program
(an interpreter under /root, or a private state directory), the sidecar runs as uid 0
with gid 1337: capture behaves the same, which is what the proxy tests do too, except
for the sidecar's own connection over lo to its pod's address (a pod calling its own
Service): `-o lo ! --uid-owner 1337 -j RETURN` precedes the --gid-owner rules, so it is
not sent back to 15006 as Istio's uid 1337 sidecar's is (docs/lab.md).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import remora
from remora.lab.settings import LabSettings

PROXY_GID = 1337
# What pilot-agent passes Envoy (istio/istio pkg/envoy/proxy.go, envoy.args): --drain-time-s
# from ProxyConfig.drainDuration (pkg/config/mesh/mesh.go: 45 s by default) and
# --drain-strategy immediate ("Clients are notified as soon as the drain process
# starts"). They bound how long a connection opened before a config update keeps its old
# filter chain (an AuthorizationPolicy applied meanwhile, say): its next response closes
# it (HTTP/1.1 connection: close, HTTP/2 GOAWAY), and whatever is still open after 45 s
# is closed (docs/proxy.md "Draining"). Envoy's own defaults would be 600 s, gradual.
DRAIN_ARGS = ["--drain-time-s", "45", "--drain-strategy", "immediate"]
# pilot-agent also passes Envoy --file-flush-interval-msec 1000 (same file: "Reduce default
# flush interval from 10s to 1s ... users will now see logs after 1s rather than 10s"):
# without it a request's access-log line reaches `remora logs -c istio-proxy` up to 10 s
# after the response. `remora proxy` writes its lines within 10 ms by default (cli/proxy.py)
# and is left at that.
ENVOY_FLUSH_ARGS = ["--file-flush-interval-msec", "1000"]


def argv(settings: LabSettings, bootstrap: Path) -> list[str]:
    if settings.sidecar == "envoy":
        # Hot restart needs shared memory named by --base-id; each pod runs one Envoy that
        # is never hot-restarted, so it is off (no clash between pods on one host).
        return [settings.envoy_binary, "-c", str(bootstrap), "--disable-hot-restart",
                "--concurrency", "1", "-l", "warning", *DRAIN_ARGS, *ENVOY_FLUSH_ARGS]
    return [sys.executable, "-m", "remora", "proxy", "-c", str(bootstrap), "-l", "warning",
            *DRAIN_ARGS]


def _reachable(path: Path, uid: int, gid: int, need: int) -> bool:
    """Can uid/gid (no supplementary groups) open PATH with NEED (an R_OK|X_OK mask)?"""
    try:
        chain = [*reversed(path.resolve().parents), path.resolve()]
        for i, p in enumerate(chain):
            st = p.stat()
            want = need if i == len(chain) - 1 else os.X_OK
            if st.st_uid == uid:
                bits = (st.st_mode >> 6) & 7
            elif st.st_gid == gid:
                bits = (st.st_mode >> 3) & 7
            else:
                bits = st.st_mode & 7
            if bits & want != want:
                return False
    except OSError:
        return False
    return True


def can_run_as(uid: int, gid: int, program: str, config_dir: Path) -> bool:
    prog = Path(program)
    package = Path(remora.__file__).parent
    return (_reachable(prog, uid, gid, os.R_OK | os.X_OK)
            and _reachable(package, uid, gid, os.R_OK | os.X_OK)
            and _reachable(Path(sys.executable), uid, gid, os.X_OK)
            and _reachable(config_dir, uid, gid, os.R_OK | os.X_OK)
            and stat.S_ISDIR(config_dir.stat().st_mode))
