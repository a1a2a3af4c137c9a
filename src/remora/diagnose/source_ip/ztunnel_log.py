"""ztunnel's access log (Istio ambient): one line per connection, key=value fields.

ztunnel (istio/ztunnel src/proxy, `access` target) logs each connection when it completes:
``... access connection complete src.addr=IP:PORT ... dst.addr=IP:PORT ...
direction="inbound" ... error="..."``. An inbound line is the server node's ztunnel
taking a connection for a pod; ``error`` says why it was closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True)
class ZtunnelEntry:
    src: str
    dst: str
    direction: str
    error: str | None
    line: int
    fields: tuple[tuple[str, str], ...] = ()


def looks_like_ztunnel(text: str) -> bool:
    return bool(re.search(r"\bsrc\.addr=\S+.*\bdst\.addr=", text))


def parse_ztunnel_log(text: str) -> list[ZtunnelEntry]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if "src.addr=" not in line or "dst.addr=" not in line:
            continue
        fields = {k: v.strip('"') for k, v in _FIELD.findall(line)}
        out.append(ZtunnelEntry(fields.get("src.addr", ""), fields.get("dst.addr", ""),
                                fields.get("direction", ""), fields.get("error"), lineno,
                                tuple(fields.items())))
    return out
