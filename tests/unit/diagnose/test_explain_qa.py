"""Defects a QA pass found in reading real clusters' evidence, each on its reproduction
(tests/data/diagnose/qa/, see its README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from remora.cli.main import main
from remora.diagnose.evidence.files import parse_iptables_text
from tests.unit.diagnose.test_cli_explain import run as explain


@pytest.fixture(scope="module")
def qa(data: Path) -> Path:
    return data / "qa"


def verdict(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = explain([*argv, "-o", "json"], capsys)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)["verdict"]
    return result


# --- 1. nat and mangle pasted as one file --------------------------------------------------

@pytest.mark.parametrize("name", ["tproxy-nat-mangle-S-noprompt.txt",
                                  "tproxy-nat-mangle-noprompt.txt"])
def test_nat_and_mangle_in_one_file_are_two_tables(qa: Path, name: str) -> None:
    rs = parse_iptables_text((qa / name).read_text(), name)
    assert set(rs.tables) == {"nat", "mangle"}
    assert rs.tables["mangle"].chains["ISTIO_TPROXY"].rules[0].target.name == "TPROXY"
    assert rs.tables["nat"].chains["ISTIO_REDIRECT"].rules[0].target.to_port == 15001
    assert "ISTIO_TPROXY" not in rs.tables["nat"].chains


@pytest.mark.parametrize("name", ["tproxy-nat-mangle-S-noprompt.txt",
                                  "tproxy-nat-mangle-noprompt.txt"])
def test_tproxy_pod_pasted_as_one_file_keeps_the_client(
        qa: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--iptables", str(qa / name), "--to", ":18080", "--istio-version", "1.11"],
                capsys)
    assert v["app_sees"] == v["client_ip"] and v["sees_client"]
    assert not any("mangle" in m["what"] for m in v["missing"])


def test_S_sections_that_mix_nat_and_mangle_targets_ask_for_the_boundary() -> None:
    from remora.errors import RemoraError
    text = ("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
            "-A ISTIO_TPROXY -p tcp -j TPROXY --on-port 15006 --tproxy-mark 0x539/0xffffffff\n")
    with pytest.raises(RemoraError, match="mixes nat rules"):
        parse_iptables_text(text, "rules.txt")


# --- 2. iptables-nft's warning that legacy tables exist ------------------------------------

@pytest.mark.parametrize("name", ["legacy-warning-iptables-save.txt",
                                  "legacy-warning2-iptables-save.txt"])
def test_legacy_tables_present_is_undecided_and_asks_for_legacy_save(
        qa: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--iptables", str(qa / name), "--to", ":18080"], capsys)
    assert v["kind"] == "undecided" and v["app_sees"] is None
    assert "legacy" in v["basis"]
    assert any("iptables-legacy-save" in m["command"] for m in v["missing"])


# --- 3. a STATIC inbound cluster's inline endpoint in a full config dump -------------------

@pytest.mark.parametrize("name", ["istio19-static-inbound-config_dump.json",
                                  "sidecar-defaultendpoint-config_dump.json"])
def test_static_inbound_cluster_in_a_dump_dials_127_0_0_1(
        qa: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--config-dump", str(qa / name), "--iptables",
                 str(qa / "redirect-iptables-save.txt"), "--to",
                 "simple-server-svc.demo-to:18080"], capsys)
    assert v["failure"] is None
    assert v["app_sees"] == "127.0.0.1" and v["kind"] == "established"


# --- 4. access-log lines for another port ---------------------------------------------------

def test_access_log_of_another_port_neither_confirms_nor_overturns(
        qa: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--access-log", str(qa / "otherport-access.log"), "--iptables",
                 str(qa / "redirect-iptables-save.txt"), "--to", ":18080",
                 "--istio-version", "1.9"], capsys)
    assert v["app_sees"] == "127.0.0.1" and v["kind"] == "inferred"
    assert v["confirmed"] is None and not v["model_note"]
    assert "other ports (8081)" in v["confirmation"]
    assert v["client_ip"] != "10.20.0.78"  # the scraper is not the client
    assert "line 1" not in v["xff"]


def test_access_log_lines_of_one_port_that_disagree_are_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = ('[2021-03-17T09:30:39.883Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 60 1 1 '
            '"-" "curl" "id-{n}" "10.20.0.77:18080" "10.20.0.77:18080" inbound|18080|| '
            '{src}:5132{n} 10.20.0.77:18080 10.20.0.78:4011{n} - default\n')
    log = tmp_path / "access.log"
    log.write_text(line.format(n=1, src="127.0.0.6") + line.format(n=2, src="127.0.0.1"))
    v = verdict(["--access-log", str(log), "--to", ":18080", "--istio-version", "1.11"],
                capsys)
    assert v["kind"] == "undecided" and v["app_sees"] is None
    assert "disagrees" in v["confirmation"] and "line 2" in v["confirmation"]


# --- 6. an istio-proxy log without access-log lines ----------------------------------------

def test_istio_proxy_log_without_access_lines_does_not_stop_the_dump(
        qa: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = tmp_path / "server"
    server.mkdir()
    (server / "istio-proxy.log").write_bytes((qa / "noaccesslog" / "istio-proxy.log").read_bytes())
    (server / "iptables-save.txt").write_bytes((qa / "redirect-iptables-save.txt").read_bytes())
    v = verdict(["--istio-dump", str(tmp_path), "--to", ":18080", "--istio-version", "1.11"],
                capsys)
    assert v["app_sees"] == "127.0.0.6"
    assert "access logging is off" in v["confirmation"]
    assert any("meshConfig.accessLogFile" in m["command"] for m in v["missing"])


# --- 7. istio-init logs of istio-iptables 1.16 and later ------------------------------------

def test_istio_init_122_tail_is_read_from_a_dump(qa: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server = tmp_path / "server"
    server.mkdir()
    (server / "istio-init.log").write_bytes((qa / "init122" / "istio-init.log").read_bytes())
    v = verdict(["--istio-dump", str(tmp_path), "--to", ":18080", "--istio-version", "1.22"],
                capsys)
    assert v["app_sees"] == v["client_ip"]  # TPROXY (mangle) capture, original_src


def test_istio_init_current_format_markers() -> None:
    from remora.diagnose.pasted import istio_init, looks_like_istio_init
    text = ("2024-06-03T03:25:00.100000Z\tinfo\tIstio iptables variables:\n"
            "PROXY_PORT=15001\nINBOUND_INTERCEPTION_MODE=REDIRECT\n"
            "INBOUND_PORTS_INCLUDE=*\n\n"
            "2024-06-03T03:25:00.110000Z\tinfo\tRunning iptables-restore with the following "
            "input:\n* nat\n-N ISTIO_IN_REDIRECT\n"
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\nCOMMIT\n"
            "2024-06-03T03:25:00.121381Z\tinfo\tRunning command (with wait lock): "
            "iptables-restore --noflush --wait=30\n")
    assert looks_like_istio_init(text)
    init = istio_init(text)
    assert init.variables["INBOUND_INTERCEPTION_MODE"] == "REDIRECT"
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in init.rules


# --- 10. JSON access logs behind kubectl's --timestamps / --prefix --------------------------

@pytest.mark.parametrize("name", ["json-ts-access.log", "json-prefix-access.log"])
def test_json_access_log_with_kubectl_prefixes(qa: Path, name: str) -> None:
    from remora.diagnose.envoy.access_log import parse_access_log
    [entry] = parse_access_log((qa / name).read_text())
    assert entry.format == "json" and entry.upstream_cluster == "inbound|18080||"
    assert entry.upstream_local_address == "10.20.0.78:45201"


# --- 11. YAML dumps, nft listings of iptables-nft tables, --to ports ------------------------

def test_yaml_config_dump_is_read(qa: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--config-dump", str(qa / "config_dump.yaml"), "--iptables",
                 str(qa / "redirect-iptables-save.txt"), "--to", ":18080"], capsys)
    assert v["app_sees"] == "127.0.0.6" and v["kind"] == "established"
    assert "upstream_bind_config" in v["basis"]


def test_nft_ruleset_of_iptables_nft_tables(qa: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--iptables", str(qa / "nftcompat-redirect-ruleset.txt"), "--to", ":18080",
                 "--istio-version", "1.20"], capsys)
    assert v["app_sees"] == "127.0.0.6"
    # nft cannot print xt TPROXY's port and mark: asked for iptables-save, no verdict
    code, _, err = explain(["--iptables", str(qa / "nftcompat-tproxy-ruleset.txt"), "--to",
                            ":18080"], capsys)
    assert code != 0 and "xt target TPROXY" in err and "iptables-save" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("port", ["99999", "0", "65536"])
def test_to_port_outside_the_tcp_range_is_refused(qa: Path, port: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(["--iptables", str(qa / "redirect-iptables-save.txt"), "--to",
                            f":{port}"], capsys)
    assert code != 0 and "outside 1-65535" in err


# --- 9. istioctl version ----------------------------------------------------------------------

def test_istioctl_version_forms(qa: Path) -> None:
    from remora.diagnose.pasted import istio_version, istio_versions
    ver = qa / "version"
    assert istio_version((ver / "ver-client.txt").read_text()) == (1, 9)  # not istioctl's 1.20
    assert istio_version((ver / "ver-asm.txt").read_text()) == (1, 9)
    assert istio_versions((ver / "ver-json.txt").read_text()) == ([(1, 9)], "data plane")
    assert istio_versions((ver / "ver-mixed.txt").read_text()) == ([(1, 9), (1, 10)],
                                                                   "data plane")
    assert istio_version((ver / "ver-mixed.txt").read_text()) is None
    assert istio_versions("client version: 1.20.3\n") == ([(1, 20)], "client")


def _version_dump(tmp_path: Path, qa: Path, name: str) -> Path:
    server = tmp_path / "server"
    server.mkdir()
    (server / "version.txt").write_bytes((qa / "version" / name).read_bytes())
    (server / "iptables-save.txt").write_bytes((qa / "redirect-iptables-save.txt").read_bytes())
    return tmp_path


def test_mixed_data_plane_across_1_10_is_undecided(qa: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--istio-dump", str(_version_dump(tmp_path, qa, "ver-mixed.txt")), "--to",
                 ":18080"], capsys)
    assert v["kind"] == "undecided" and v["app_sees"] is None
    assert "mixed data plane (1.9, 1.10)" in v["istio_version"]


def test_mixed_data_plane_all_1_10_or_later_is_not_a_guess(qa: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    # 1.10.3 and 1.12.1 sidecars: whichever the server runs, it binds 127.0.0.6, so the
    # report must not add "before 1.10 it would be 127.0.0.1 (pass --istio-version)"
    dump = _version_dump(tmp_path, qa, "ver-mixed.txt")
    (dump / "server" / "version.txt").write_text(
        "client version: 1.12.1\ncontrol plane version: 1.12.1\n"
        "data plane version: 1.10.3 (2 proxies), 1.12.1 (4 proxies)\n")
    v = verdict(["--istio-dump", str(dump), "--to", ":18080"], capsys)
    assert v["app_sees"] == "127.0.0.6" and v["kind"] == "inferred"
    assert v["istio_version"].startswith("1.10 or later (")
    assert "not in the evidence: before 1.10" not in v["basis"]


@pytest.mark.parametrize(("build", "app_sees"), [("1.11.4", "127.0.0.6"), ("1.9.5", "127.0.0.1")])
def test_pilot_agent_version_line_names_the_sidecars_version(
        qa: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], build: str,
        app_sees: str) -> None:
    # `kubectl logs POD -c istio-proxy` from the sidecar's start: pilot-agent logs
    # `Version 1.11.4-<git sha>-Clean` (pilot/cmd/pilot-agent/app/cmd.go); with the REDIRECT
    # rules and no config dump the version decides between 127.0.0.1 and 127.0.0.6
    server = tmp_path / "server"
    server.mkdir()
    log = (qa / "noaccesslog" / "istio-proxy.log").read_text()
    assert "Version 1.11.4-" in log
    (server / "istio-proxy.log").write_text(log.replace("Version 1.11.4-", f"Version {build}-"))
    (server / "iptables-save.txt").write_bytes((qa / "redirect-iptables-save.txt").read_bytes())
    v = verdict(["--istio-dump", str(tmp_path), "--to", ":18080"], capsys)
    assert v["app_sees"] == app_sees
    minor = ".".join(build.split(".")[:2])
    assert v["istio_version"].startswith(f"{minor} (server evidence: pilot-agent's start-up "
                                         "line, ")
    assert f"istio-proxy.log line 3: 2022-12-17T09:20:01.121035Z info Version {build}-" in (
        v["istio_version"])


def test_istioctl_version_json_is_read(qa: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    v = verdict(["--istio-dump", str(_version_dump(tmp_path, qa, "ver-json.txt")), "--to",
                 ":18080"], capsys)
    assert v["app_sees"] == "127.0.0.1" and v["istio_version"].startswith("1.9 ")


def test_client_only_version_is_refused(tmp_path: Path, qa: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    dump = _version_dump(tmp_path, qa, "ver-client.txt")
    (dump / "server" / "version.txt").write_text("client version: 1.20.3\n")
    code, _, err = explain(["--istio-dump", str(dump), "--to", ":18080"], capsys)
    assert code != 0 and "only istioctl's own version" in err


# --- 8. proxy-config --file and explain share one loader -------------------------------------

def proxy_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["proxy-config", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["utf16-config_dump.json", "config_dump.json.gz",
                                  "bom-config_dump.json"])
def test_saved_dump_encodings_are_read_by_both_commands(
        qa: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    for what in ("listener", "cluster", "secret"):
        code, out, err = proxy_config([what, "--file", str(qa / name)], capsys)
        assert code == 0, err
    code, out, _ = proxy_config(["listener", "--file", str(qa / name)], capsys)
    assert "virtualInbound" in out or "15006" in out
    v = verdict(["--config-dump", str(qa / name), "--to", ":18080"], capsys)
    assert v["app_sees"] == "127.0.0.6"


@pytest.mark.parametrize(("content", "message"), [
    ('[{"name": "inbound|18080||", "type": "ORIGINAL_DST", "connectTimeout": "10s"}]',
     "is a list of clusters (`istioctl proxy-config cluster POD -o json` output)"),
    ("null", "it is JSON null"),
    ('"x"', "it is JSON str"),
    ("configs:\n- x: 1\n", "it looks like YAML"),
])
@pytest.mark.parametrize("what", ["secret", "listener", "cluster"])
def test_proxy_config_file_that_is_no_dump_is_one_line(
        tmp_path: Path, content: str, message: str, what: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dump.json"
    path.write_text(content)
    code, _, err = proxy_config([what, "--file", str(path)], capsys)
    assert code != 0 and message in err and err.count("\n") == 1 and "Traceback" not in err


# --- 5. a gateway's config dump ----------------------------------------------------------------

def test_gateway_as_client_dials_from_its_pod_ip(qa: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config-dump", f"client={qa / 'gateway-config_dump.json'}", "--config-dump",
            str(qa / "server-config_dump.json"), "--iptables",
            str(qa / "redirect-iptables-save.txt"), "--to", "simple-server-svc.demo-to:18080"]
    code, out, _ = explain(argv, capsys)
    assert code == 0 and "15001" not in out and "Istio gateway" in out
    v = verdict(argv, capsys)
    assert v["failure"] is None and v["client_ip"] == "10.20.0.50"
    assert v["app_sees"] == "127.0.0.6"


def test_gateway_as_server_is_set_aside(qa: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config-dump", str(qa / "gateway-config_dump.json"), "--to", ":18080"]
    code, out, _ = explain(argv, capsys)
    assert code == 0 and "15006" not in out.split("5. verdict")[0].split("4. server")[1]
    assert "Istio gateway's (node type router)" in out
    v = verdict(argv, capsys)
    assert v["failure"] is None and v["kind"] == "undecided"
