"""The node daemon: the runtime's reconciler thread, the API socket, and cluster DNS's
process (started or adopted, remora.node.resolver).

Started by `remora node daemon --state-dir DIR` (or `remora up`, through
remora.node.client.ensure_daemon). SIGTERM/SIGINT stop the daemon and leave pods running,
like restarting kubelet; the next daemon adopts them. The `down` op stops and removes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

from remora.errors import RemoraError
from remora.node import hooks, resolver, teardown
from remora.node.api import Api
from remora.node.client import NodeClient
from remora.node.config import NodeConfig
from remora.node.runtime import Runtime

log = logging.getLogger("remora.node")
TICK = 0.2
RESOLVER_CHECK = 2.0  # seconds between checks that cluster DNS still runs


class Daemon:
    def __init__(self, config: NodeConfig, pod_setup: str | None = None) -> None:
        self.config = config
        self.pod_setup = pod_setup
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runtime: Runtime | None = None
        self._resolver_args: tuple[Path, list[str], list[str]] | None = None

    def _loop(self, rt: Runtime) -> None:
        woken = True
        checked = time.monotonic()
        while not self._stop.is_set():
            try:
                rt.reconcile_once(full=woken)
            except Exception:
                log.exception("reconcile pass failed")
            if self._resolver_args and time.monotonic() - checked >= RESOLVER_CHECK:
                checked = time.monotonic()
                try:  # a resolver that died is started again, as a container would be
                    if resolver.recorded(self.config.state_dir) is None:
                        log.warning("cluster DNS is gone; starting it again")
                        resolver.ensure(*self._resolver_args)
                except Exception:
                    log.exception("cluster DNS restart failed")
            woken = rt.wake.wait(TICK)
            rt.wake.clear()

    def stop_reconciler(self) -> None:
        self._stop.set()
        if self.runtime is not None:
            self.runtime.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def main(self) -> None:
        if NodeClient(self.config.state_dir).alive():
            raise RemoraError(f"a node daemon already serves {self.config.state_dir}",
                              "use it, or stop it first (`remora down` removes the lab)")
        setup = hooks.load(self.pod_setup)
        rt = Runtime(self.config, setup)
        self.runtime = rt
        await asyncio.to_thread(rt.start)  # pyroute2 runs its own loop: not on this one
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        # cluster DNS runs as its own process (remora.node.resolver): it keeps answering
        # while this daemon is down, and is adopted like the pods when it comes back
        # (the IPv6 DNS address too when the lab has IPv6)
        resolver_args = (self.config.state_dir,
                         sorted(set(rt.plan.dns_ips()) | {str(rt.plan.dns_ip)}),
                         [node.netns for node in rt.nodes])
        pid, adopted = await asyncio.to_thread(resolver.ensure, *resolver_args)
        log.info("cluster DNS %d %s", pid, "adopted" if adopted else "started")
        self._resolver_args = resolver_args

        async def on_down() -> list[str]:
            await asyncio.to_thread(self.stop_reconciler)
            removed = await asyncio.to_thread(teardown.down, self.config.state_dir,
                                              self.config.stop_grace, self.config.etc_netns)
            loop.call_later(0.05, done.set)
            return removed

        api = Api(rt, on_down)
        server = await api.serve(self.config.socket_path)
        # e.g. the lab's Kubernetes API (docs/kubeapi.md); None when it cannot start
        services = [s for name in setup.daemon_services
                    if (s := await hooks.load_service(name)(api, self.config.state_dir))]
        self.config.pid_path.write_text(f"{os.getpid()}\n")
        self._thread = threading.Thread(target=self._loop, args=(rt,), name="reconciler",
                                        daemon=True)
        self._thread.start()
        log.info("node daemon %d serving %s", os.getpid(), self.config.socket_path)
        try:
            await done.wait()
        finally:
            server.close()
            for service in services:
                service.close()
            await asyncio.to_thread(self.stop_reconciler)
            with contextlib.suppress(FileNotFoundError, ValueError):
                # only this daemon's own: after `down` (which removed them) a new
                # daemon's may already be there
                if int(self.config.pid_path.read_text()) == os.getpid():
                    self.config.socket_path.unlink()
                    self.config.pid_path.unlink()
            rt.store.close()


def run(config: NodeConfig, pod_setup: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(Daemon(config, pod_setup).main())
