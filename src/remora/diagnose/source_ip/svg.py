"""The connection's path as an SVG picture: each hop's addresses, and where the source
address changes (drawn in red). Hand-written SVG, no dependency; `path_hops` is the pure
part the picture (and tests) are built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from remora.diagnose.facts import hostport, split_hostport
from remora.diagnose.source_ip.explain import Report


@dataclass(frozen=True)
class Hop:
    frm: int  # box index
    to: int
    src: str
    dst: str
    note: str
    source_changed: bool = False


BOXES = ("client app", "client sidecar", "server sidecar", "server app")


def path_hops(r: Report) -> tuple[list[str], list[bool], list[Hop]]:
    """(box captions, box in path?, hops) for the report's connection."""
    f = r.facts
    client, server = f["client_ip"].value, f["server_ip"].value
    port = int(f["port"].value)
    vip = f["service_ip"].value if f["service_ip"].known else "<service IP>"
    s1, s2, s3, s4 = r.steps
    c_captured = not (s1.walk is not None and s1.walk.capture.kind != "REDIRECT")
    s_captured = not (s3.walk is not None and s3.walk.capture.kind not in ("REDIRECT", "TPROXY"))
    out_port = s1.walk.capture.port if s1.walk and s1.walk.capture.port else 15001
    in_port = s3.walk.capture.port if s3.walk and s3.walk.capture.port else 15006
    assumed = " (assumed)" if s1.walk is None else ""
    captions = [f"{BOXES[0]}\n{client}", f"{BOXES[1]}\n:{out_port}{assumed}",
                f"{BOXES[2]}\n:{in_port}", f"{BOXES[3]}\n{hostport(server, port)}"]
    in_path = [True, c_captured, s_captured, True]
    hops: list[Hop] = []
    first_note = _short(s1.walk.capture.summary()) if s1.walk else "client rules not given"
    upstream_src = client
    if s2.sidecar and s2.sidecar.upstream_source and s2.sidecar.upstream_source[0].isdigit():
        upstream_src = s2.sidecar.upstream_source
    tls = ""
    if s2.sidecar and s2.sidecar.upstream_tls:
        tls = "mTLS" if s2.sidecar.upstream_tls.mode == "TLS" else "plain text"
    second_note = (_short(s3.walk.capture.summary()) if s3.walk
                   else f"server: {r.mode} (assumed)")
    if c_captured:
        hops.append(Hop(0, 1, hostport(client, None), hostport(vip, port), first_note))
        nxt = 2 if s_captured else 3
        hops.append(Hop(1, nxt, hostport(upstream_src, None), hostport(server, port),
                        " ".join(x for x in (tls, second_note) if x)))
    else:
        nxt = 2 if s_captured else 3
        hops.append(Hop(0, nxt, hostport(client, None), hostport(server, port),
                        first_note + "; " + second_note))
    if s_captured:
        seen = r.verdict.app_sees or "?"
        why = "original_src" if s4.sidecar and s4.sidecar.upstream_mark else (
            "upstream_bind_config" if seen == "127.0.0.6" else "")
        hops.append(Hop(2, 3, seen, hostport(server, port), f"over lo {why}".strip()))
    prev = split_hostport(hops[0].src)[0]
    marked = []
    for hop in hops:
        ip = split_hostport(hop.src)[0]
        marked.append(Hop(hop.frm, hop.to, hop.src, hop.dst, hop.note, ip != prev))
        prev = ip
    return captions, in_path, marked


def render_svg(r: Report) -> str:
    captions, in_path, hops = path_hops(r)
    w, box_w, box_h, top = 1100, 180, 64, 90
    gap = (w - 40 - len(captions) * box_w) / (len(captions) - 1)
    xs = [20 + i * (box_w + gap) for i in range(len(captions))]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="260" '
           'font-family="sans-serif" font-size="12">',
           '<defs><marker id="a" markerWidth="10" markerHeight="8" refX="9" refY="4" '
           'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#333"/></marker>'
           '<marker id="r" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
           '<path d="M0,0 L10,4 L0,8 z" fill="#c00"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="20" y="30" font-size="15" font-weight="bold">{escape(_title(r))}</text>']
    for i, (cap, x) in enumerate(zip(captions, xs, strict=True)):
        style = 'fill="#eef4ff" stroke="#3366cc"' if in_path[i] else (
            'fill="#f4f4f4" stroke="#bbb" stroke-dasharray="4 3"')
        out.append(f'<rect x="{x:.0f}" y="{top}" width="{box_w}" height="{box_h}" rx="8" '
                   f'{style}/>')
        for k, line in enumerate(cap.split("\n")):
            out.append(f'<text x="{x + box_w / 2:.0f}" y="{top + 26 + 18 * k}" '
                       f'text-anchor="middle">{escape(line)}</text>')
        if not in_path[i]:
            out.append(f'<text x="{x + box_w / 2:.0f}" y="{top - 8}" text-anchor="middle" '
                       'fill="#999">not in path</text>')
    for hop in hops:
        x1 = xs[hop.frm] + box_w
        x2 = xs[hop.to]
        y = top + box_h + 30 if hop.to - hop.frm > 1 else top + box_h / 2
        colour, marker = ("#c00", "r") if hop.source_changed else ("#333", "a")
        if hop.to - hop.frm > 1:  # skip a box: route the arrow below it
            out.append(f'<polyline points="{x1:.0f},{top + box_h / 2} {x1 + 10:.0f},{y} '
                       f'{x2 - 10:.0f},{y} {x2:.0f},{top + box_h / 2}" fill="none" '
                       f'stroke="{colour}" stroke-width="2" marker-end="url(#{marker})"/>')
            tx, ty = (x1 + x2) / 2, y + 16
        else:
            out.append(f'<line x1="{x1:.0f}" y1="{y}" x2="{x2:.0f}" y2="{y}" '
                       f'stroke="{colour}" stroke-width="2" marker-end="url(#{marker})"/>')
            tx, ty = (x1 + x2) / 2, top + box_h + 20
        out.append(f'<text x="{tx:.0f}" y="{y - 8:.0f}" text-anchor="middle" '
                   f'fill="{colour}">src {escape(hop.src)}</text>')
        out.append(f'<text x="{tx:.0f}" y="{ty:.0f}" text-anchor="middle">dst '
                   f'{escape(hop.dst)}</text>')
        out.append(f'<text x="{tx:.0f}" y="{ty + 15:.0f}" text-anchor="middle" fill="#555" '
                   f'font-size="10">{escape(hop.note[:60])}</text>')
        if hop.source_changed:
            out.append(f'<text x="{tx:.0f}" y="{ty + 30:.0f}" text-anchor="middle" '
                       f'fill="#c00" font-weight="bold">source changes here</text>')
    out.append(f'<text x="20" y="245" font-size="13">{escape(_verdict(r))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _short(summary: str) -> str:
    """A capture summary without the rule text in parentheses."""
    return summary.split(" (")[0]


def _title(r: Report) -> str:
    return (f"source IP: client {r.facts['client_ip'].value} -> server "
            f"{r.facts['server_ip'].value} ({r.mode})")


def _verdict(r: Report) -> str:
    v = r.verdict
    if v.failure:
        return f"no verdict: {v.failure}"[:150]
    if v.app_sees is None:
        return "the app's view of the source cannot be told from this evidence"
    return (f"the app sees RemoteAddr {v.app_sees}"
            + (" = the client" if v.sees_client else f", not the client {v.client_ip}"))
