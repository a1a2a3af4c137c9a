"""`remora explain source-ip` end to end through the CLI, with files as evidence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from remora.cli.main import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["explain", "source-ip", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def seed_dump(tmp_path: Path, data: Path) -> Path:
    """An --istio-dump directory as a user would lay out the seed's evidence."""
    server = tmp_path / "dump" / "server"
    server.mkdir(parents=True)
    shutil.copy(data / "seed_redirect_nat.txt", server / "nat.txt")
    shutil.copy(data / "seed_virtualinbound_listener.json", server / "listeners.json")
    shutil.copy(data / "seed_inbound_cluster.json", server / "clusters.json")
    shutil.copy(data / "seed_server_access.log", server / "access.log")
    return tmp_path / "dump"


def test_istio_dump_dir_text(seed_dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--istio-dump", str(seed_dump), "--server-pod",
                        "simple-server-86b499d4dd-bjrjz.demo-to"], capsys)
    assert code == 0
    assert "the app sees 127.0.0.6 (not the client 10.20.0.78)" in out
    assert "UPSTREAM_LOCAL_ADDRESS 127.0.0.6:44213" in out
    assert "remora patch deployment simple-server -n demo-to -p" in out
    assert "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN" in out


def test_side_prefixed_files_json(reference: Path, goldens: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    rules = goldens / "inbound-ports-wildcard-tproxy.golden"
    client_rules = goldens / "DERIVED-default-injection-redirect.txt.notgolden"
    code, out, _ = run([
        "--config-dump", f"client={reference / 'client-redirect.json'}",
        "--config-dump", f"server={reference / 'server-tproxy.json'}",
        "--iptables", f"client={client_rules}", "--iptables", str(rules),
        "--to", "srv.default.svc.cluster.local:18080", "-o", "json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["mode"] == "TPROXY"
    assert doc["verdict"]["app_sees"] == "10.20.0.78" and doc["verdict"]["sees_client"]
    assert doc["facts"]["service_ip"]["value"] == "10.20.0.77"  # from the route's domains
    assert [s["status"] for s in doc["steps"]] == ["ok", "ok", "ok", "ok"]


def test_compare_and_diagram(seed_dump: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "path.svg"
    code, out, err = run(["--istio-dump", str(seed_dump), "--compare", "--diagram", str(svg)],
                         capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["MODE", "HEADER", "OPTION"]
    assert lines[1].startswith("REDIRECT (now)") and "127.0.0.6" in lines[1]
    assert lines[3].startswith("TPROXY") and "10.20.0.78" in lines[3]
    assert svg.read_text().startswith("<svg") and "diagram written" in err


@pytest.mark.parametrize("argv,message", [
    (["--from", "simple-client", "-n", "demo-from", "--to", "simple-server-svc:18080",
      "--state-dir", "/nonexistent-remora-lab"],
     "no lab is running at /nonexistent-remora-lab"),
    (["--from", "simple-client", "-n", "demo-from"], "--from needs --to"),
    (["--from", "simple-client", "--to", "svc:80", "--iptables", "x.txt"], "do not mix"),
    ([], "no evidence given"),
    (["--config-dump", "/nonexistent/config_dump.json"], "does not exist"),
    (["--istio-dump", "/nonexistent-dir"], "is not a directory"),
    (["--iptables", "x.txt", "--family", "ipv6"], "--family is for the live form"),
    (["--from", "c", "--to", "s:1", "--kube", "--family", "ipv4"],
     "--family is for the live form"),
])
def test_errors_are_one_line(argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code != 0 and out == ""
    assert err.startswith("remora: error: ") and message in err
    assert err.count("\n") == 1


def test_a_misspelt_side_is_named(tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    # `--iptables clinet=FILE` read as a path "clinet=FILE" said "does not exist" of a file
    # that does: name the side instead
    nat = tmp_path / "nat.txt"
    nat.write_text("-A OUTPUT -j ISTIO_OUTPUT\n")
    code, out, err = run(["--iptables", f"clinet={nat}"], capsys)
    assert code != 0 and out == ""
    assert err == (f"remora: error: iptables file clinet={nat}: 'clinet' is not a side "
                   f"(client or server) (fix: write client={nat} or server={nat} (the path "
                   "alone is the server's))\n")


@pytest.mark.parametrize("name,content,message", [
    ("config_dump.json", '{"configs": [{"@type": "type.googleapis.com/envoy.admin',
     "not complete JSON"),
    ("config_dump.json", '{"apiVersion": "v1", "kind": "Pod"}', "not Envoy configuration"),
    ("iptables.txt", "Chain? what chain\nnothing here\n", "not an iptables listing"),
    ("access.log", "hello\n", "no access-log lines"),
])
def test_bad_files(tmp_path: Path, name: str, content: str, message: str,
                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    path.write_text(content)
    flag = {"json": "--config-dump", "txt": "--iptables", "log": "--access-log"}[
        name.rsplit(".", 1)[1]]
    code, _, err = run([flag, str(path)], capsys)
    assert code != 0 and message in err and err.count("\n") == 1


def test_istio_version_option_and_verdict_kind_in_json(
        tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the seed's nat listing: 127.0.0.1 as Istio 1.9 would, 127.0.0.6 as 1.11."""
    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(data / "seed_redirect_nat.txt", server / "nat.txt")
    seen = {}
    for version in ("1.9", "1.11"):
        code, out, _ = run(["--istio-dump", str(tmp_path), "--to", ":18080",
                            "--istio-version", version, "-o", "json"], capsys)
        assert code == 0
        verdict = json.loads(out)["verdict"]
        assert verdict["kind"] == "inferred" and "--istio-version" in verdict["istio_version"]
        seen[version] = verdict["app_sees"]
    assert seen == {"1.9": "127.0.0.1", "1.11": "127.0.0.6"}
    code, _, err = run(["--istio-dump", str(tmp_path), "--istio-version", "ten"], capsys)
    assert code != 0 and "--istio-version ten" in err


def test_ipv6_listing_and_an_ipv6_destination(data: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--iptables` of a real `ip6tables -t nat -L -v` listing and `--to [IPv6]:PORT`:
    the IPv6 walk; the seed's IPv4-only inbound cluster has no IPv6 bind address, and the
    output says so instead of pretending."""
    code, out, err = run(["--iptables", str(data / "seed_ipv6_redirect_nat.txt"),
                          "--config-dump", str(data / "seed_inbound_cluster.json"),
                          "--to", "[fd00:96::1:bc]:18080", "--server-ip", "fd00:10:20::77"],
                         capsys)
    assert code == 0, err
    assert "fd00:10:20::77" in out and "REDIRECT to port 15006" in out
    assert "no IPv6 bind address in the cluster" in out
    code, out, err = run(["--iptables", str(data / "seed_ipv6_redirect_nat.txt"),
                          "--to", "fd00:96::1:bc"], capsys)
    assert "the port is not a number" not in err
    code, out, err = run(["--iptables", str(data / "seed_ipv6_redirect_nat.txt"),
                          "--to", "svc:http"], capsys)
    assert code == 2 and "--to svc:http: the port is not a number" in err


def test_no_evidence_names_the_live_form_first(capsys: pytest.CaptureFixture[str]) -> None:
    _code, _out, err = run([], capsys)
    assert err.index("--from POD") < err.index("--istio-dump"), err
