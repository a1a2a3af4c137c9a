"""What a source that saw the pods knows beyond the evidence, applied to the core's report.

Shared by the lab's live form and the cluster form: both know whether each pod has a
sidecar (a side without one has no sidecar evidence to collect, so that is not a gap),
and may have the server app's own ``RemoteAddr=`` (or gRPC ``Peer=``) line as
confirmation.
"""

from __future__ import annotations

from remora.diagnose.evidence.target import LabPod
from remora.diagnose.facts import app_peer, split_hostport
from remora.diagnose.source_ip.explain import Report


def review(report: Report, client: LabPod, server: LabPod, app_line: str,
           for_what: str) -> Report:
    no_sidecar = [role for role, pod in (("client", client), ("server", server))
                  if not pod.has_sidecar]
    report.missing = [m for m in report.missing
                      if not any(f"{role} sidecar" in m.what for role in no_sidecar)
                      and not (not server.has_sidecar and "access log" in m.what)]
    if not server.has_sidecar:
        report.mode = "none (no sidecar)"  # the core reads "no TPROXY rule" as REDIRECT
    v = report.verdict
    peer = app_peer(app_line) if app_line else None
    if not v.confirmed and peer and v.app_sees and split_hostport(peer[1])[0] == v.app_sees:
        v.confirmed = True
        v.confirmation = f"the server app logged `{app_line}` for {for_what}"
    return report
