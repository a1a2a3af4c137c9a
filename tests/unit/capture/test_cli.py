"""`remora capture` through the real CLI entry point: output, errors, exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from remora.cli.main import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["capture", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to run a real command fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a command was run: {args}")
    monkeypatch.setattr(subprocess, "run", refuse)


def test_dry_run_prints_istio_golden(data_dir: Path, capsys: pytest.CaptureFixture[str],
                                     no_commands: None) -> None:
    golden = (data_dir / "conformance/istio-iptables/ipv6-inbound-ports.golden").read_text()
    code, out, err = run(["-n", "-u", "1337", "-b", "4000,5000", "--dual-stack"], capsys)
    assert code == 0 and out == golden
    assert err == "# would run: ip -6 addr add ::6/128 dev lo\n"  # IPv6: the ::6 bind address


def test_dry_run_notes_tproxy_routing_on_stderr(capsys: pytest.CaptureFixture[str],
                                                no_commands: None) -> None:
    code, out, err = run(["--dry-run", "-u", "1337", "-m", "TPROXY", "-b", "*", "-t", "7",
                          "-r", "70", "--dual-stack"], capsys)
    assert code == 0
    assert "-j TPROXY --tproxy-mark 7/0xffffffff --on-port 15006" in out
    assert err.splitlines() == [
        "# would run: ip -6 addr add ::6/128 dev lo",
        "# would run: ip rule add fwmark 7 lookup 70",
        "# would run: ip -6 rule add fwmark 7 lookup 70",
        "# would run: ip route add local default dev lo table 70",
        "# would run: ip -6 route add local default dev lo table 70",
    ]


@pytest.mark.parametrize(("argv", "code", "text"), [
    (["-m", "BRIDGE"], 2, "unknown interception mode -m 'BRIDGE' (fix: use -m REDIRECT"),
    (["-b", "80,x"], 2, "is not a list of ports"),
    (["-i", "300.0.0.0/8"], 2, "is not a list of CIDRs"),
    (["-u", "proxy"], 2, "is not a list of numeric uids"),
    (["--network-namespace", "remora-no-such-ns"], 1, "network namespace 'remora-no-such-ns' "
     "does not exist"),
])
def test_bad_input(argv: list[str], code: int, text: str, capsys: pytest.CaptureFixture[str],
                   no_commands: None) -> None:
    got, out, err = run(argv, capsys)
    assert got == code and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("remora: error: ")
    assert text in err and "(fix: " in err


def test_not_root_is_refused_before_anything_runs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        no_commands: None) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = run(["-b", "*", "--dual-stack"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("remora: error: remora capture must run as root")
    assert "sudo" in err and "--dry-run" in err


def test_missing_iptables_is_named(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], no_commands: None) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, _, err = run(["-b", "*", "--dual-stack"], capsys)
    assert code == 1
    assert "iptables-save is not installed" in err and "apt-get install iptables" in err


def test_dry_run_native_nftables_prints_istio_nft_golden(
        data_dir: Path, capsys: pytest.CaptureFixture[str], no_commands: None) -> None:
    golden = (data_dir / "conformance/istio-nftables/ipv6-inbound-ports.golden").read_text()
    code, out, _ = run(["-n", "--native-nftables", "-u", "1337", "-b", "4000,5000",
                        "--dual-stack"], capsys)
    assert code == 0 and out == golden
