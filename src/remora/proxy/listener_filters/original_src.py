"""``envoy.filters.listener.original_src``: upstream connections for this downstream bind
to the downstream's IP (IP_TRANSPARENT) and carry SO_MARK ``mark``, so the app sees the
real client address (Istio adds it, mark 1337, in TPROXY mode). Needs CAP_NET_ADMIN.
https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/original_src_filter
"""

from __future__ import annotations

from typing import Any

from remora.proxy.config.strict import Fields
from remora.proxy.interfaces import OriginalSrc
from remora.proxy.listener_filters import AcceptedSocket
from remora.proxy.registry import register


class OriginalSrcFilter:
    def __init__(self, mark: int, bind_port: bool) -> None:
        self.mark = mark
        self.bind_port = bind_port

    async def on_accept(self, conn: AcceptedSocket) -> bool:
        facts = conn.facts
        if facts.remote_ip:  # only IP downstreams (not unix sockets)
            facts.original_src = OriginalSrc(facts.remote_ip, self.mark, self.bind_port,
                                             facts.remote_port)
        return True


@register("listener", "envoy.filters.listener.original_src",
          "envoy.extensions.filters.listener.original_src.v3.OriginalSrc")
def _factory(typed: Fields, _context: Any) -> OriginalSrcFilter:
    mark = typed.integer("mark", 0)
    bind_port = typed.boolean("bind_port", False)
    typed.done()
    return OriginalSrcFilter(mark or 0, bool(bind_port))
