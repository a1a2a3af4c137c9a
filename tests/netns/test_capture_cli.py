"""`remora capture` as a user runs it: apply, apply again, --verify, --cleanup-only."""

from __future__ import annotations

import pytest

from remora.cli.main import main
from tests.lab import Lab
from tests.netns.capture_helpers import INJECTOR_ARGS, save

pytestmark = pytest.mark.netns


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["capture", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    ns = lab.namespace("cli")
    before = save(lab, ns)
    args = ["--network-namespace", ns.name, *INJECTOR_ARGS]
    code, out, _ = run(args, capsys)
    assert code == 0 and out.startswith("capture: applied (18 IPv4 rules)")
    code, out, _ = run(args, capsys)
    assert code == 0 and out.startswith("capture: already-installed")
    code, out, _ = run(["--verify", *args], capsys)
    assert code == 0 and out.strip().endswith(": OK")
    code, out, _ = run(["--verify", *args, "-d", "15090"], capsys)
    assert code == 1
    assert "unexpected: nat: -A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN" in out
    code, out, _ = run(["--cleanup-only", "--network-namespace", str(ns.path)], capsys)
    assert code == 0 and out.startswith("capture: cleaned up")
    assert save(lab, ns) == before
