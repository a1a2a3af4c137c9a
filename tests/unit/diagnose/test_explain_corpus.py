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

from remora.diagnose.evidence.files import load_dump_dir
from remora.diagnose.source_ip.explain import explain_source_ip
from remora.diagnose.source_ip.render import render_text, to_json
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


def test_why_127_0_0_6_quotes_the_pods_rules_or_says_they_are_istios_defaults() -> None:
    _, with_rules = _run(CORPUS / "tongwork-2022-nat-restore")
    why = " ".join(with_rules.verdict.explanation_127)
    assert "`-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN` (in this pod: nat/ISTIO_OUTPUT #1)" \
        in why
    assert "not in the evidence" not in why
    _, log_only = _run(CORPUS / "seed-1.11-redirect-log-only")
    why = " ".join(log_only.verdict.explanation_127)
    assert why.count("(Istio's default rule, not in the evidence)") == 2


def test_the_log_overrides_the_model_and_says_why() -> None:
    """Istio 1.8's log says 127.0.0.1 where a 1.10+ model would say 127.0.0.6."""
    _, report = _run(CORPUS / "istioio-8404-log-1.8")
    v = report.verdict
    assert (v.app_sees, v.kind) == ("127.0.0.1", "established")
    assert "UPSTREAM_LOCAL_ADDRESS 127.0.0.1:52328" in v.basis
    assert v.model_note.startswith("the model said 127.0.0.6")
    assert "the version assumed was wrong" in v.model_note
