"""Cluster DNS as its own process, so that names keep resolving while the daemon is down.

Kubernetes runs CoreDNS apart from kubelet: a kubelet restart (or crash) does not take
cluster DNS with it. Here the node daemon writes the zone (services and pods) to
<state>/zone.json whenever it changes, and a resolver process serves it on the DNS
address of every node (UDP and TCP port 53, remora.node.dnsserver), reloading the file
when it is replaced. The resolver lives in node 1's network namespace and leads its own
session, like a container: killing the daemon (even with SIGKILL) leaves it answering, a
restarted daemon adopts it by PID and start time (<state>/dns.pid), and `down` stops it
with every other process in the lab's namespaces.

    python3 -m remora.node.resolver --state-dir DIR --address 172.16.0.10 NODE_NETNS...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from remora.errors import RemoraError
from remora.node import process
from remora.node.dns import Zone

ZONE_FILE = "zone.json"
PID_FILE = "dns.pid"
LOG_FILE = "dns.log"


# -- the zone on disk (pure) --------------------------------------------------------------
def zone_to_json(zone: Zone) -> dict[str, Any]:
    out: dict[str, Any] = {
        "domain": zone.domain,
        "services": sorted([ns, name, ip] for (ns, name), ip in zone.services.items()),
        "pods": dict(sorted(zone.pods.items()))}
    if zone.services6:  # AAAA records (an IPv4 lab's file stays as it was)
        out["services6"] = sorted([ns, name, ip] for (ns, name), ip in zone.services6.items())
    return out


def zone_from_json(data: dict[str, Any]) -> Zone:
    return Zone(domain=str(data.get("domain") or "cluster.local"),
                services={(str(ns), str(name)): str(ip)
                          for ns, name, ip in data.get("services") or []},
                pods={str(ip): str(ns) for ip, ns in (data.get("pods") or {}).items()},
                services6={(str(ns), str(name)): str(ip)
                           for ns, name, ip in data.get("services6") or []})


def write_zone(state_dir: Path, zone: Zone) -> None:
    """Replace zone.json atomically (the resolver never reads half a file)."""
    path = state_dir / ZONE_FILE
    tmp = path.with_name(f".{ZONE_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(zone_to_json(zone), sort_keys=True))
    tmp.replace(path)


class ZoneFile:
    """The current zone: zone.json, read again whenever it was replaced."""

    def __init__(self, path: Path, domain: str = "cluster.local") -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self._zone = Zone(domain=domain)

    def __call__(self) -> Zone:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self._zone
        key = (st.st_ino, st.st_mtime_ns)
        if key != self._key:
            try:
                self._zone = zone_from_json(json.loads(self.path.read_text()))
                self._key = key
            except (OSError, ValueError):
                pass  # keep answering from the last good zone
        return self._zone


# -- the daemon's side: start or adopt ------------------------------------------------------
def recorded(state_dir: Path) -> tuple[int, int] | None:
    """(pid, start ticks) of the resolver the state dir names, if that process lives."""
    try:
        data = json.loads((state_dir / PID_FILE).read_text())
        pid, ticks = int(data["pid"]), int(data["start_ticks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, ticks) if process.is_alive(pid, ticks) else None


def ensure(state_dir: Path, address: str | list[str], node_netns: list[str],
           timeout: float = 10.0) -> tuple[int, bool]:
    """The lab's resolver: (pid, adopted). Adopts a running one, else starts one in the
    first node's namespace and waits until it serves (it writes dns.pid once bound).
    ADDRESS: the DNS address, or one per cluster family (IPv4 and IPv6)."""
    running = recorded(state_dir)
    if running is not None:
        return running[0], True
    (state_dir / PID_FILE).unlink(missing_ok=True)
    addresses = [address] if isinstance(address, str) else address
    argv = ["ip", "netns", "exec", node_netns[0], sys.executable, "-m", "remora.node.resolver",
            "--state-dir", str(state_dir),
            *(arg for a in addresses for arg in ("--address", a)), *node_netns]
    with open(state_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = recorded(state_dir)
        if found is not None and found[0] == proc.pid:
            return proc.pid, False
        if proc.poll() is not None:
            tail = (state_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-1:]
            raise RemoraError(f"cluster DNS exited with {proc.returncode}: "
                              f"{tail[0] if tail else 'no output'}",
                              f"see {state_dir / LOG_FILE}")
        time.sleep(0.05)
    process.kill(proc.pid, process.start_ticks(proc.pid) or 0)
    raise RemoraError(f"cluster DNS did not start within {timeout:.0f}s",
                      f"see {state_dir / LOG_FILE}")


# -- the resolver process -----------------------------------------------------------------
async def serve(state_dir: Path, address: str | list[str], node_netns: list[str]) -> None:
    from remora.node.dnsserver import DnsServer

    addresses = [address] if isinstance(address, str) else address
    server = DnsServer(ZoneFile(state_dir / ZONE_FILE))
    for name in node_netns:
        for one in addresses:
            await server.listen(name, one)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    ticks = process.start_ticks(os.getpid()) or 0
    pid_file = state_dir / PID_FILE
    tmp = pid_file.with_name(f".{PID_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "start_ticks": ticks}))
    tmp.replace(pid_file)
    where = ", ".join(f"[{a}]:53" if ":" in a else f"{a}:53" for a in addresses)
    print(f"cluster DNS {os.getpid()} serving {where} in {' '.join(node_netns)}", flush=True)
    try:
        await done.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="remora.node.resolver")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--address", required=True, action="append",
                        help="the DNS address (repeat it for each IP family)")
    parser.add_argument("netns", nargs="+")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.state_dir, args.address, args.netns))


if __name__ == "__main__":
    main()
