"""explain source-ip on evidence real users posted (tests/data/explain/*/source.yaml).

Each set names its source, the Istio version and the answer the source establishes: the
address the app sees (an IP, ``client`` for the client's own address, or null when the
evidence cannot settle it) and the kind a correct tool gives (established / inferred /
undecided). The set is read as `remora explain source-ip --istio-dump DIR` reads it, with
`--to :PORT` and `--istio-version` where the source.yaml says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from remora.diagnose.evidence_files import load_dump_dir
from remora.diagnose.source_ip import explain_source_ip
from remora.diagnose.source_ip_render import render_text, to_json
from tests.datafiles import data_path

CORPUS = data_path("explain")
SETS = sorted(p.parent for p in CORPUS.glob("*/source.yaml"))


def test_corpus_is_collected() -> None:
    assert len(SETS) >= 25
    modes = {yaml.safe_load((d / "source.yaml").read_text())["mode"] for d in SETS}
    assert {"REDIRECT", "TPROXY", "ambient"} <= modes


def _run(d: Path) -> tuple[dict[str, Any], Any]:
    meta = yaml.safe_load((d / "source.yaml").read_text())
    ev = load_dump_dir(d)
    if meta.get("target_port"):
        ev.target.port = int(meta["target_port"])
    if meta.get("server_ip"):
        ev.server.ip = str(meta["server_ip"])
    if meta.get("istio_version_option"):
        ev.istio_version = str(meta["istio_version_option"])
    return meta, explain_source_ip(ev)


@pytest.mark.parametrize("d", SETS, ids=[d.name for d in SETS])
def test_verdict_on_real_evidence(d: Path) -> None:
    meta, report = _run(d)
    want = meta["answer"]
    v = report.verdict
    assert v.kind == want["kind"], (v.kind, v.app_sees, v.basis)
    if want["app_sees"] is None:
        assert v.app_sees is None, (v.app_sees, v.basis)
        assert v.missing or report.missing
    elif want["app_sees"] == "client":
        assert v.sees_client is True, (v.app_sees, v.basis)
    else:
        assert v.app_sees == want["app_sees"], (v.app_sees, v.basis)
    assert v.basis
    text = render_text(report)
    assert f"({v.kind})" in text and v.basis in text
    assert to_json(report)["verdict"]["kind"] == v.kind
