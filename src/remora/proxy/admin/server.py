"""The admin listener: a small HTTP/1.1 server on the bootstrap's ``admin.address``
(TCP, or a unix socket ``pipe``). Endpoints and output formats follow Envoy's
https://www.envoyproxy.io/docs/envoy/latest/operations/admin
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from remora import __version__
from remora.proxy.admin.clusters import clusters_json, clusters_text
from remora.proxy.admin.config_dump import config_dump
from remora.proxy.config.address import Address
from remora.proxy.server.sockets import bind_listener
from remora.proxy.stats import StatsStore

if TYPE_CHECKING:
    from remora.proxy.server.runtime import Server

log = logging.getLogger("remora.proxy")
Response = tuple[int, str, str]  # status, content type, body

HELP = {
    "/": "this list", "/help": "this list",
    "/config_dump": "dump current config (?include_eds for endpoints)",
    "/listeners": "listener names and addresses (?format=json)",
    "/clusters": "upstream clusters, hosts and their stats (?format=json)",
    "/stats": "counters, gauges, histograms (?filter=REGEX, ?usedonly, ?format=json)",
    "/stats/prometheus": "stats in Prometheus text format",
    "/ready": "LIVE when serving (200), else the state (503)",
    "/server_info": "version, state, uptime, command line options",
    "/quitquitquit": "exit the server (POST)",
    "/drain_listeners": "stop accepting, keep open connections (POST, ?inboundonly, "
                        "?graceful: drain them first)",
    "/logging": "view or change the log level (POST ?level=debug|info|warning|error)",
}


class Admin:
    def __init__(self, server: Server, options: dict[str, Any],
                 stats_view: Callable[[], StatsStore], on_quit: Callable[[], None]) -> None:
        self.server = server
        self.options = options
        self.stats_view = stats_view
        self.on_quit = on_quit
        self._srv: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        address = self.server.bootstrap.admin
        if address is None:
            return
        sock = bind_listener(address)
        if address.pipe is not None:
            self._srv = await asyncio.start_unix_server(self._handle, sock=sock)
        else:
            self._srv = await asyncio.start_server(self._handle, sock=sock)

    async def stop(self) -> None:
        if self._srv is not None:
            self._srv.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = [*lines[0].split(" "), "", ""][:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                status, ctype, body = self.dispatch(method, target)
                data = body.encode()
                reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                          405: "Method Not Allowed", 503: "Service Unavailable"}.get(status, "")
                writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
                             f"content-length: {len(data)}\r\n"
                             f"cache-control: no-cache, max-age=0\r\n"
                             f"x-content-type-options: nosniff\r\n"
                             f"server: envoy\r\n\r\n".encode() + data)
                await writer.drain()
                if target.startswith("/quitquitquit") and status == 200:
                    self.on_quit()
                    break
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def dispatch(self, method: str, target: str) -> Response:
        url = urlsplit(target)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path.rstrip("/") or "/"
        text, js = "text/plain; charset=UTF-8", "application/json"
        if path in ("/", "/help"):
            return 200, text, "admin commands are:\n" + "".join(
                f"  {k}: {v}\n" for k, v in HELP.items())
        if path == "/ready":
            state = self.server.state
            return (200 if state == "LIVE" else 503), text, state + "\n"
        if path == "/server_info":
            return 200, js, json.dumps(self._server_info(), indent=1)
        if path == "/config_dump":
            return 200, js, json.dumps(config_dump(self.server, "include_eds" in q), indent=1)
        if path == "/listeners":
            return self._listeners(q.get("format") == "json")
        if path == "/clusters":
            return self._clusters(q.get("format") == "json")
        if path == "/stats":
            stats = self.stats_view()
            if q.get("format") == "json":
                items = [{"name": k, "value": v} for k, v in
                         sorted({**stats.counters, **stats.gauges}.items())]
                return 200, js, json.dumps({"stats": items}, indent=1)
            return 200, text, stats.render_text(q.get("filter") or None, "usedonly" in q)
        if path == "/stats/prometheus":
            return 200, "text/plain; version=0.0.4", self.stats_view().render_prometheus()
        if path in ("/quitquitquit", "/drain_listeners", "/logging") and method != "POST" \
                and not (path == "/logging" and not q):
            return 405, text, "This endpoint requires POST.\n"
        if path == "/quitquitquit":
            return 200, text, "OK\n"
        if path == "/drain_listeners":
            self.server.drain_listeners(inbound_only="inboundonly" in q,
                                        graceful="graceful" in q)
            return 200, text, "OK\n"
        if path == "/logging":
            level = q.get("level")
            if level:
                py = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warning": "WARNING",
                      "warn": "WARNING", "error": "ERROR", "critical": "CRITICAL",
                      "off": "CRITICAL"}.get(level.lower())
                if py is None:
                    return 400, text, f"unknown level {level}\n"
                logging.getLogger("remora").setLevel(py)
            current = logging.getLevelName(logging.getLogger("remora").getEffectiveLevel())
            return 200, text, f"active loggers:\n  remora.proxy: {current.lower()}\n"
        return 404, text, "invalid path. " + "admin commands are:\n" + "".join(
            f"  {k}: {v}\n" for k, v in HELP.items())

    def _server_info(self) -> dict[str, Any]:
        up = int(time.time() - self.server.started)
        return {
            "version": f"remora/{__version__}/Python",
            "state": self.server.state,
            "uptime_current_epoch": f"{up}s",
            "uptime_all_epochs": f"{up}s",
            "hot_restart_version": "disabled",
            "command_line_options": self.options,
            "node": {"id": self.server.bootstrap.node_id,
                     "cluster": self.server.bootstrap.node_cluster},
        }

    def _listeners(self, as_json: bool) -> Response:
        """Envoy's admin listeners handler: a ``name::address`` line per listen socket
        (additional_addresses too); JSON ``local_address`` plus
        ``additional_local_addresses`` (source/server/admin/listeners_handler.cc)."""
        def proto(addr: Address) -> dict[str, object]:
            return ({"pipe": {"path": addr.pipe}} if addr.pipe is not None else
                    {"socket_address": {"address": addr.ip, "port_value": addr.port}})

        statuses: list[dict[str, object]] = []
        lines: list[str] = []
        for name, active in sorted(self.server.listeners.items()):
            addresses = active.config.addresses
            lines += [f"{name}::{a}\n" for a in addresses]
            status: dict[str, object] = {"name": name, "local_address": proto(addresses[0])}
            if len(addresses) > 1:
                status["additional_local_addresses"] = [proto(a) for a in addresses[1:]]
            statuses.append(status)
        if as_json:
            return 200, "application/json", json.dumps({"listener_statuses": statuses},
                                                       indent=1)
        return 200, "text/plain; charset=UTF-8", "".join(lines)

    def _clusters(self, as_json: bool) -> Response:
        described = self.server.cluster_manager.describe()
        if as_json:
            return 200, "application/json", json.dumps(clusters_json(described), indent=1)
        return 200, "text/plain; charset=UTF-8", clusters_text(described)
