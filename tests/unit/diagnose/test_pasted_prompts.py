"""Shell prompts of the common shapes above pasted listings and JSON are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from remora.diagnose.envoy.config import EnvoyConfig, parse_config_text
from remora.diagnose.evidence.files import parse_iptables_text
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


NO_V = """$ iptables -t nat -L -n
Chain OUTPUT (policy ACCEPT)
target     prot opt source               destination
ISTIO_OUTPUT  tcp  --  0.0.0.0/0            0.0.0.0/0

Chain ISTIO_OUTPUT (1 references)
target     prot opt source               destination
RETURN     all  --  127.0.0.6            0.0.0.0/0
ISTIO_IN_REDIRECT  all  --  0.0.0.0/0            !127.0.0.1           owner UID match 1337
RETURN     all  --  0.0.0.0/0            0.0.0.0/0            ! owner UID match 1337
RETURN     all  --  0.0.0.0/0            0.0.0.0/0            owner UID match 1337
RETURN     all  --  0.0.0.0/0            127.0.0.1
ISTIO_REDIRECT  all  --  0.0.0.0/0            0.0.0.0/0

Chain ISTIO_REDIRECT (1 references)
target     prot opt source               destination
REDIRECT   tcp  --  0.0.0.0/0            0.0.0.0/0            redir ports 15001
"""


def test_listing_without_v_hides_o_lo_so_output_is_not_decided(tmp_path: Path) -> None:
    """`iptables -L` without -v has no in/out columns: `-o lo -m owner ! --uid-owner 1337
    -j RETURN` reads as matching the app's own packet. The client capture is then not
    decided from it, rather than "not captured"."""
    from remora.diagnose.evidence import files as ef
    from remora.diagnose.source_ip.evidence import Evidence
    from remora.diagnose.source_ip.explain import explain_source_ip

    (tmp_path / "client-nat.txt").write_text(NO_V)
    ev = Evidence()
    ef.add_iptables(ev.client, tmp_path / "client-nat.txt")
    assert ev.client.iptables is not None and not ev.client.iptables.interfaces_known
    ev.target.port = 8080
    report = explain_source_ip(ev)
    step1 = report.steps[0]
    assert step1.status == "unknown" and any("without -v" in n for n in step1.notes)
    assert any("hides `-o lo`" in m.what for m in report.missing)
