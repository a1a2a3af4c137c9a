"""Every case of Istio's TestNftables (the --native-nftables backend), byte for byte.

Same cases as TestIptables (tests/data/conformance/istio-iptables/cases.json) plus
`inbound-ports-empty-tproxy`, which only the nftables test has. Istio's golden is
knftables' Transaction.String(): one command per line, each ending in a newline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from remora.capture.model_nft import build_nft
from remora.capture.render_nft import transaction
from tests.datafiles import data_path
from tests.unit.capture.conformance import case_config, load_cases

SHARED = data_path("conformance")
EXTRA: dict[str, dict[str, Any]] = {
    "inbound-ports-empty-tproxy.golden": {"InboundPortsInclude": "",
                                          "InboundInterceptionMode": "TPROXY"},
}
_cases_file = SHARED / "istio-iptables/cases.json"
CASE_NAMES = sorted([*json.loads(_cases_file.read_text())["cases"], *EXTRA])


def test_all_28_nft_goldens_are_covered(data_dir: Path) -> None:
    goldens = sorted(p.name for p in (data_dir / "conformance/istio-nftables").glob("*.golden"))
    assert len(goldens) == 28 and goldens == CASE_NAMES


@pytest.mark.cases(28)  # tests/collection_checks.py: fewer is a collection error
@pytest.mark.parametrize("name", CASE_NAMES)
def test_nft_golden(data_dir: Path, name: str) -> None:
    data = load_cases(data_dir / "conformance/istio-iptables")
    mutations = EXTRA.get(name) or data["cases"][name]
    config = case_config(data["base"], mutations)
    golden = (data_dir / "conformance/istio-nftables" / name).read_bytes()
    assert transaction(build_nft(config)).encode() == golden
