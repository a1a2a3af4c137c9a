"""Starting and stopping the API inside the node daemon (remora.node.daemon calls these):
credentials from the lab's CA, a free port on 127.0.0.1, the kubeconfig written with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from remora.kubeapi import certs
from remora.kubeapi.backend import NodeBackend
from remora.kubeapi.handlers import Handler
from remora.kubeapi.server import KubeApiServer
from remora.node.hooks import NodeRequests

log = logging.getLogger("remora.kubeapi")


async def start(node_api: NodeRequests, state_dir: Path) -> KubeApiServer | None:
    """The running server, or None (logged) when it cannot start: the lab then works
    without it, and `remora kubeconfig` says there is none."""
    try:
        creds = certs.ensure(state_dir)
        server = KubeApiServer(Handler(NodeBackend(node_api, state_dir), creds.token), creds)
        port = await server.start("127.0.0.1", 0)
        certs.write_kubeconfig(state_dir, f"https://127.0.0.1:{port}", creds)
    except Exception:
        log.exception("the Kubernetes API could not start")
        certs.kubeconfig_path(state_dir).unlink(missing_ok=True)
        return None
    log.info("Kubernetes API on https://127.0.0.1:%d (%s)", port,
             certs.kubeconfig_path(state_dir))
    return server
