"""Shell prompts of the common shapes above pasted listings and JSON are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from remora.diagnose.envoy_config import EnvoyConfig, parse_config_text
from remora.diagnose.evidence_files import parse_iptables_text
from tests.datafiles import data_path

PROMPTS = ["$", "#", "[root@master ~]#", "root@node-1:~#", "bash-4.4#", "sh-5.1$", "~", ">",
           "$ kubectl exec -it po -c istio-proxy --"]


def _body(name: str) -> str:
    text = data_path("diagnose", name).read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("$"))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_listing_tables_come_from_any_prompt_shape(prompt: str) -> None:
    text = (f"{prompt} iptables -t mangle -L -v\n{_body('seed_tproxy_mangle.txt')}\n"
            f"{prompt} iptables -t nat -L -v\n{_body('seed_tproxy_nat.txt')}\n")
    rs = parse_iptables_text(text, "rules.txt")
    assert set(rs.tables) == {"mangle", "nat"}
    assert any(r.target.name == "TPROXY" for c in rs.tables["mangle"].chains.values()
               for r in c.rules)


@pytest.mark.parametrize("prompt", PROMPTS[2:])
def test_prompt_above_json_is_skipped(prompt: str, tmp_path: Path) -> None:
    cluster = data_path("diagnose", "seed_inbound_cluster.json").read_text()
    body = cluster[cluster.index("["):] if "[" in cluster[:200] else cluster
    cfg = EnvoyConfig()
    parse_config_text(cfg, f"{prompt} istioctl pc cluster srv --fqdn 'inbound|18080||' -o json\n"
                      + body, "clusters.json")
    assert "inbound|18080||" in cfg.clusters
