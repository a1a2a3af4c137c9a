"""The sidecar's process: `remora proxy` (default) or a real Envoy, on the same files.

The sidecar runs as Istio's injected istio-proxy container's securityContext says, which
the node runtime applies with setpriv: uid 1337 / gid 1337 in REDIRECT mode, uid 0 /
gid 1337 with CAP_NET_ADMIN in TPROXY mode (so original_src can bind a foreign address).
The uid matters in REDIRECT mode: istio-iptables' nat rules test `--uid-owner 1337`
before `--gid-owner 1337`, and `-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j
RETURN` lets a uid 0 / gid 1337 process's connection to its own pod IP (the sidecar's
upstream when a pod calls its own Service) reach the app directly, skipping the inbound
listener 15006 that the rule before it (`! -d 127.0.0.1/32 -o lo -m owner --uid-owner
1337 -j ISTIO_IN_REDIRECT`) sends uid 1337's there. TPROXY mode needs no uid 1337: its
mangle OUTPUT rules mark such a connection 1338 by `--uid-owner` *or* `--gid-owner`, and
PREROUTING hands a 1338-marked packet on lo to the TPROXY rule (istio/istio#31165).

When uid 1337 cannot reach the interpreter, the package or the pod's files (a pyenv under
/root, a private state directory), the sidecar still runs as uid 1337, with the one
ambient capability CAP_DAC_READ_SEARCH (capabilities(7): bypass file read and directory
read/search checks): the lab's stand-in for an image whose files belong to istio-proxy.
Writing needs nothing more: the container's log file is handed to its uid by the node
runtime (remora.node.process.spawn), and the sidecar writes nowhere else.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import remora
from remora.lab.settings import LabSettings

PROXY_GID = 1337
# what uid 1337 needs when it cannot otherwise read its interpreter, package or config
READ_CAPS = ("dac_read_search",)
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


def _reachable(path: Path, uid: int, gid: int, need: int, read_search: bool = False) -> bool:
    """Can uid/gid (no supplementary groups) open PATH with NEED (an R_OK|X_OK mask)?

    READ_SEARCH: the process has CAP_DAC_READ_SEARCH, which passes every directory search
    and file read check, but not a file's execute check (capabilities(7))."""
    try:
        chain = [*reversed(path.resolve().parents), path.resolve()]
        for i, p in enumerate(chain):
            st = p.stat()
            want = need if i == len(chain) - 1 else os.X_OK
            if read_search:
                want = 0 if stat.S_ISDIR(st.st_mode) else want & ~os.R_OK
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


def can_run_as(uid: int, gid: int, program: str, config_dir: Path,
               read_search: bool = False) -> bool:
    """Can uid/gid (READ_SEARCH: with CAP_DAC_READ_SEARCH) start PROGRAM on CONFIG_DIR?"""
    prog = Path(program)
    package = Path(remora.__file__).parent
    return (_reachable(prog, uid, gid, os.R_OK | os.X_OK, read_search)
            and _reachable(package, uid, gid, os.R_OK | os.X_OK, read_search)
            and _reachable(Path(sys.executable), uid, gid, os.X_OK, read_search)
            and _reachable(config_dir, uid, gid, os.R_OK | os.X_OK, read_search)
            and stat.S_ISDIR(config_dir.stat().st_mode))


def identity(uid: int | None, gid: int | None, caps: tuple[str, ...], program: str,
             config_dir: Path) -> tuple[int | None, int, tuple[str, ...]]:
    """The sidecar's (uid, gid, capabilities): the securityContext's, plus READ_CAPS for a
    non-root uid that cannot reach its files without them."""
    gid = gid if gid is not None else PROXY_GID
    if uid not in (None, 0) and not can_run_as(uid, gid, program, config_dir):
        caps = (*caps, *(c for c in READ_CAPS if c not in caps))
    return uid, gid, caps
