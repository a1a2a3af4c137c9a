"""`remora proxy-config ... --file DUMP` against istioctl's own goldens.

tests/data/istioctl-configdump/ holds istioctl's testdata (istioctl/pkg/writer/envoy/
configdump/testdata and istioctl/pkg/proxyconfig/testdata, Apache-2.0, Istio Authors): a
config dump and the table istioctl prints for it. The same dump through the CLI's offline
form must print the same bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from remora.cli.proxy_config import proxy_config
from tests.datafiles import data_path

GOLD = data_path("istioctl-configdump")

CASES = [
    # (what, dump, extra args, istioctl's output)
    ("route", "routes/k8s-gateway-http-route-path-prefix/configdump.json", [],
     "routes/k8s-gateway-http-route-path-prefix/output.txt"),
    ("route", "routes/istio-gateway-http-route-prefix/configdump.json", [],
     "routes/istio-gateway-http-route-prefix/output.txt"),
    ("endpoint", "endpoint/configdump.json", [], "endpoint/emptyfilter_output.txt"),
    ("endpoint", "endpoint/configdump.json", ["--port", "8080"],
     "endpoint/portfilter_output.txt"),
    ("endpoint", "endpoint/configdump.json", ["--port", "8080", "-o", "json"],
     "endpoint/portfilter_output.json"),
    ("secret", "secret/spire/config_dump.json", [], "secret/spire/output"),
    ("secret", "secret/istio/config_dump.json", [], "secret/istio/output"),
]


def _run(*args: str) -> str:
    result = CliRunner().invoke(proxy_config, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("what", "dump", "extra", "want"), CASES,
                         ids=[f"{c[0]}:{c[3]}" for c in CASES])
def test_file_form_equals_istioctl_golden(what: str, dump: str, extra: list[str],
                                          want: str) -> None:
    got = _run(what, "--file", str(GOLD / dump), *extra)
    assert got == (GOLD / want).read_text()


def test_spire_federation_has_a_rootca_row_per_trust_domain() -> None:
    got = _run("secret", "--file", str(GOLD / "secret/spire/config_dump.json"))
    rows = [line.split() for line in got.splitlines()[1:]]
    assert [(r[0], r[-1]) for r in rows] == [("default", "east.local"), ("ROOTCA", "east.local"),
                                             ("ROOTCA", "west.local")]


def _rows(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def test_internal_address_endpoints_as_istioctl_all() -> None:
    """istioctl proxy-config all's endpoint section (its golden prefixes `endpoint/`)."""
    summary = (GOLD / "proxyconfig/config_dump_summary.txt").read_text()
    section = summary[summary.index("NAME                                                       "
                                    "STATUS"):]
    want = [[re.sub(r"^endpoint/", "", c) for c in row] for row in _rows(section)]
    got = _rows(_run("endpoint", "--file", str(GOLD / "proxyconfig/config_dump.json")))
    assert got == want
    assert got[1][0] == "envoy://connect_originate/192.168.195.248:800"


def test_routes_and_secrets_as_istioctl_all() -> None:
    """istioctl proxy-config all's route and secret sections: only the RoutesConfigDump's
    routes (none of the listeners' inline ones)."""
    summary = (GOLD / "proxyconfig/config_dump_summary.txt").read_text()
    sections = summary.split("\n\n")
    dump = str(GOLD / "proxyconfig/config_dump.json")
    for what, prefix in (("route", "route/"), ("secret", "secret/")):
        want_text = next(s for s in sections if f"\n{prefix}" in s)
        want = [[re.sub(f"^{prefix}", "", c) for c in row] for row in _rows(want_text)]
        assert _rows(_run(what, "--file", dump)) == want, what


def test_legacy_filter_names_get_the_type_istioctl_of_their_era_gives(tmp_path: Path) -> None:
    """Istio 1.0's listeners (a user's paste, tests/data/explain/zhaohuabing-*): v2
    `config` blocks and envoy.tcp_proxy. istioctl <= 1.4 typed a listener by its first
    envoy.tcp_proxy / envoy.http_connection_manager filter (BlackHoleCluster included) and
    listed the listeners in the dump's order, padding 5 (listener.go of 2019)."""
    entries = json.loads(data_path("explain", "zhaohuabing-1.0-virtual-listener", "server",
                                   "listeners.json").read_text())
    dump = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v2alpha.ListenersConfigDump",
                         "dynamic_active_listeners": entries}]}
    path = tmp_path / "config_dump.json"
    path.write_text(json.dumps(dump))
    got = _run("listener", "--file", str(path), "--verbose", "false")
    assert got == ("ADDRESS            PORT      TYPE\n"
                   "0.0.0.0            15001     TCP\n"
                   "192.168.206.23     9080      TCP\n")


def test_legacy_names_with_typed_config_count_as_http(tmp_path: Path) -> None:
    listener = {"name": "0.0.0.0_9080", "address": {"socket_address": {
        "address": "0.0.0.0", "port_value": 9080}}, "filter_chains": [{"filters": [{
            "name": "envoy.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.filter.network."
                         "http_connection_manager.v2.HttpConnectionManager",
                "rds": {"route_config_name": "9080"}}}]}]}
    dump = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                         "dynamic_listeners": [{"name": "0.0.0.0_9080",
                                                "active_state": {"listener": listener}}]}]}
    path = tmp_path / "config_dump.json"
    path.write_text(json.dumps(dump))
    summary = _run("listener", "--file", str(path), "--verbose", "false")
    assert summary.splitlines()[1].split() == ["0.0.0.0", "9080", "HTTP"]
    verbose = _run("listener", "--file", str(path))
    assert verbose.splitlines()[1].split() == ["0.0.0.0", "9080", "ALL", "Route:", "9080"]


def test_file_and_pod_do_not_mix() -> None:
    result = CliRunner().invoke(proxy_config, ["route", "p", "--file",
                                               str(GOLD / "endpoint/configdump.json")])
    assert result.exit_code != 0 and "not both" in str(result.exception or result.output)


@pytest.mark.parametrize("head, tail", [
    ("$ istioctl proxy-config all httpbin-7b8d4 -n default -o json\n", ""),
    ("[root@node ~]# istioctl pc all httpbin-7b8d4 -o json\n\n", ""),
    ("```json\n", "```\n"),
])
def test_a_pasted_dump_reads_as_the_file_itself(tmp_path: Path, head: str, tail: str) -> None:
    """A dump saved from a terminal or a document keeps its prompt and command line, or a
    markdown fence: read as explain reads the same file (it was "--file ... is not JSON:
    Expecting value: line 1 column 1"), the tables are those of the dump itself."""
    dump = GOLD / "proxyconfig/config_dump.json"
    pasted = tmp_path / "pasted.json"
    pasted.write_text(head + dump.read_text() + tail)
    for what in ("cluster", "listener", "secret"):
        assert _run(what, "--file", str(pasted)) == _run(what, "--file", str(dump)), what


def test_all_equals_istioctl_golden() -> None:
    """`istioctl proxy-config all --file` (proxyconfig_test.go's golden): the version
    lines, then cluster/, listener/ (ADDRESSES), route/, secret/ and endpoint/ tables,
    byte for byte."""
    got = _run("all", "--file", str(GOLD / "proxyconfig/config_dump.json"))
    assert got == (GOLD / "proxyconfig/config_dump_summary.txt").read_text()


def test_all_with_headers_titles_each_section() -> None:
    got = _run("all", "--file", str(GOLD / "proxyconfig/config_dump.json"), "--with-headers")
    titles = re.findall(r"^------ (.*) ------$", got, re.M)
    assert titles == ["BOOTSTRAP INFO", "CLUSTER INFO", "LISTENER INFO", "ROUTE INFO",
                      "SECRET INFO", "ENDPOINTS INFO"]
    plain = (GOLD / "proxyconfig/config_dump_summary.txt").read_text()
    assert re.sub(r"------ .* ------\n\n", "", got) == plain


def test_all_not_verbose_has_the_type_and_vhost_count_columns() -> None:
    got = _run("all", "--file", str(GOLD / "proxyconfig/config_dump.json"),
               "--verbose", "false")
    assert "NAME                   ADDRESSES PORT  TYPE\n" \
           "listener/main_internal           0     HTTP+TCP\n" in got
    assert _rows(got.split("\n\n")[3]) == [
        ["NAME", "VIRTUAL HOSTS"],
        ["route/inbound-vip|8000|http|httpbin.default.svc.cluster.local", "1"]]


def test_the_listener_subcommand_keeps_its_own_table() -> None:
    """Only `all` names rows and says ADDRESSES; `listener` keeps the seed's 1.11 table."""
    got = _run("listener", "--file", str(GOLD / "proxyconfig/config_dump.json"))
    assert got.startswith("ADDRESS PORT  MATCH DESTINATION\n")
    assert "listener/" not in got


def test_all_json_is_the_dump_as_read_and_yaml_the_same_object() -> None:
    """istioctl's `all -o json` prints the config dump it read (fmt.Fprintln), `-o yaml`
    the same through JSONToYAML (keys sorted)."""
    import yaml

    path = GOLD / "proxyconfig/config_dump.json"
    assert _run("all", "--file", str(path), "-o", "json") == path.read_text() + "\n"
    got = _run("all", "--file", str(path), "-o", "yaml")
    assert yaml.safe_load(got) == json.loads(path.read_text())
    assert got.startswith("configs:\n- '@type': type.googleapis.com/envoy.admin.v3."
                          "BootstrapConfigDump\n  bootstrap:\n")


def test_all_version_line_from_the_user_agent_build_version(tmp_path: Path) -> None:
    """configdump.go getUserAgentVersionInfo: MAJOR.MINOR.PATCH-label/status/type/ssl; the
    proxy SHA after its colon."""
    dump = json.loads((GOLD / "proxyconfig/config_dump.json").read_text())
    node = dump["configs"][0]["bootstrap"]["node"]
    node["metadata"]["ISTIO_PROXY_SHA"] = "istio-proxy:abc123"
    node["userAgentBuildVersion"] = {
        "version": {"majorNumber": 1, "minorNumber": 40, "patch": 2},
        "metadata": {"build.label": "dev", "revision.status": "Clean",
                     "build.type": "RELEASE", "ssl.version": "BoringSSL"}}
    path = tmp_path / "config_dump.json"
    path.write_text(json.dumps(dump))
    head = _run("all", "--file", str(path)).split("\n\n")[0]
    assert head == ("Istio Version:       1.21.0-1226\n"
                    "Istio Proxy Version: abc123\n"
                    "Envoy Version:       1.40.2-dev/Clean/RELEASE/BoringSSL")
