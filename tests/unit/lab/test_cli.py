"""The lab commands' bad-input paths, no root and no daemon needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from remora.cli.main import cli
from remora.errors import PrivilegeError, RemoraError, UsageError
from tests.unit.lab.test_manifests import TYPO_FILE, TYPO_PATH


def run(*args: str) -> BaseException | None:
    result = CliRunner().invoke(cli, list(args), standalone_mode=False)
    return result.exception


def test_up_without_root_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    exc = run("up", "--state-dir", str(tmp_path / "s"))
    assert isinstance(exc, PrivilegeError)
    assert "needs root" in exc.problem and "sudo remora up" in (exc.fix or "")
    assert not (tmp_path / "s").exists()


def test_demo_without_root_names_demo_in_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    # the fix is the command the user ran, whole (it was "sudo remora up )": the demo's
    # inner `up`, and a "..." that the one-line form's rstrip(".") ate)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for args, command in ((["demo"], "remora demo"), (["demo", "--grpc"], "remora demo --grpc"),
                          (["up"], "remora up"), (["down"], "remora down")):
        exc = run(*args, "--state-dir", str(tmp_path / "s"))
        assert isinstance(exc, PrivilegeError), (args, exc)
        assert exc.problem.startswith(f"{command} needs root"), exc.problem
        assert exc.one_line().endswith(f"(fix: run it with sudo: `sudo {command}`)"), \
            exc.one_line()
    assert not (tmp_path / "s").exists()


def test_a_root_lab_is_not_reported_as_stopped_to_another_user() -> None:
    """A user without root whose lab runs as root is told to use sudo, not that the
    daemon is not running (it was: "its node daemon (pid N) is not running: 6 of 6 pods
    still running", because neither its socket nor its pid answer that user). A real
    listening socket of mode 0600, as the daemon's; connect(2) by another uid fails with
    EACCES (unix(7)). As root, a forked child drops to nobody; otherwise the socket is
    made unwritable for its owner, which connect(2) refuses the same way."""
    import os
    import shutil
    import socket
    import tempfile

    from remora.lab import session
    from remora.node import stopped  # noqa: F401 (imported before the child drops root:
    # nobody cannot read a Python installed under /root, e.g. a pyenv)

    directory = Path(tempfile.mkdtemp(prefix="remora-sock-"))  # reachable by nobody
    try:
        directory.chmod(0o755)
        (directory / "remora.db").write_text("")  # a lab's store is there too
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(directory / "node.sock"))
        listener.listen()
        os.chmod(directory / "node.sock", 0o600 if os.geteuid() == 0 else 0o000)

        def connect() -> str:
            try:
                session.connect(directory)
            except RemoraError as exc:
                return f"{type(exc).__name__}: {exc.one_line()}"
            except Exception as exc:  # the child's, reported rather than lost
                return repr(exc)
            return "connected"

        if os.geteuid() != 0:
            got = connect()
        else:
            read, write = os.pipe()
            child = os.fork()
            if child == 0:  # pragma: no cover (the child)
                os.close(read)
                try:
                    os.setgroups([])
                    os.setresgid(65534, 65534, 65534)
                    os.setresuid(65534, 65534, 65534)
                    os.write(write, connect().encode())
                finally:
                    os._exit(0)
            os.close(write)
            with os.fdopen(read) as pipe:
                got = pipe.read()
            os.waitpid(child, 0)
        listener.close()
        assert got.startswith(f"PrivilegeError: the lab at {directory} runs as root"), got
        assert "refuses uid" in got and "(fix: run the command with sudo)" in got, got
        assert "not running" not in got, got
    finally:
        shutil.rmtree(directory)


def test_no_lab_running(tmp_path: Path) -> None:
    exc = run("get", "pods", "--state-dir", str(tmp_path))
    assert isinstance(exc, RemoraError) and "no lab is running" in exc.problem


def test_unknown_kind_and_missing_manifest(tmp_path: Path) -> None:
    exc = run("get", "widgets", "--state-dir", str(tmp_path))
    assert isinstance(exc, UsageError)
    exc = run("apply", "-f", str(tmp_path / "missing.yaml"), "--state-dir", str(tmp_path))
    assert isinstance(exc, RemoraError) and "does not exist" in exc.problem


def test_validate_takes_kubectls_values_only(tmp_path: Path) -> None:
    manifest = tmp_path / "svc.yaml"
    manifest.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
                        "spec: {ports: [{port: 80}]}\n")
    exc = run("apply", "-f", str(manifest), "--validate=bogus", "--state-dir", str(tmp_path))
    assert isinstance(exc, UsageError)
    assert exc.problem == ('invalid - validate option "bogus"; must be one of: strict (or '
                           "true), warn, ignore (or false)")
    for value in ("--validate=warn", "--validate=false", "--validate"):  # then: no lab
        exc = run("apply", "-f", str(manifest), value, "--state-dir", str(tmp_path))
        assert isinstance(exc, RemoraError) and "no lab is running" in exc.problem, value


def test_bad_manifest_fails_before_the_lab_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\n"
                   "spec: {ports: [{port: 80}]}\n")
    exc = run("up", "-f", str(bad), "--state-dir", str(tmp_path / "s"))
    assert isinstance(exc, RemoraError) and "Bad_Name" in exc.one_line()
    assert not (tmp_path / "s").exists()


def test_commands_are_listed() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for name in ("up", "down", "apply", "delete", "get", "describe", "logs", "exec", "patch",
                 "rollout", "proxy-config", "demo"):
        assert f"  {name}" in result.output


def test_unmapped_image_fails_before_the_lab_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
                   "spec: {containers: [{name: c, image: acme/thing}]}\n")
    exc = run("up", "-f", str(bad), "--state-dir", str(tmp_path / "s"))
    assert isinstance(exc, RemoraError) and "image 'acme/thing'" in exc.problem
    assert not (tmp_path / "s").exists()


def test_hints_name_the_state_dir_and_no_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    # sudo resets REMORA_STATE_DIR: a hint must carry --state-dir for a non-default lab
    from remora.node.config import lab_command
    monkeypatch.setenv("REMORA_STATE_DIR", "/tmp/x/state")
    assert lab_command("down", Path("/tmp/x/state")) == "remora down --state-dir /tmp/x/state"
    assert lab_command("down", Path("/var/lib/remora")) == "remora down"


def test_a_quoted_error_line_and_a_fix_make_one_fix() -> None:
    # a failed step's last line already ends in its fix: never "(fix: ...) (fix: ...)"
    err = RemoraError("`remora apply` failed (exit 1): no lab (fix: run `remora up`)",
                      "`remora down` removes it")
    assert err.one_line() == ("`remora apply` failed (exit 1): no lab (fix: run `remora up`; "
                              "`remora down` removes it)")
    assert RemoraError("plain", "do x.").one_line() == "plain (fix: do x)"


def test_help_names_pa_ap_and_remora_state_dir() -> None:
    out = CliRunner().invoke(cli, ["get", "--help"]).output
    assert "pa or ap" in " ".join(out.split())
    assert "$REMORA_STATE_DIR" in out


def test_up_f_validates_as_apply_before_the_lab_starts(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """`remora up -f` reads its manifests through apply's --validate: strict (the default)
    refuses the batch in the apiserver's words and starts nothing; warn lets it through
    (here to the root check, the next thing `up` needs; the warning comes with the
    apply, as `remora apply --validate=warn` prints it: tests/netns/test_lab_cli.py)."""
    # not root: should the refusal ever not happen, `up` stops at its root check rather
    # than starting a lab from a unit test
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(TYPO_FILE)
    state = tmp_path / "s"
    result = CliRunner().invoke(cli, ["up", "-f", str(manifest), "--state-dir", str(state)],
                                standalone_mode=False)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"remora: error: {manifest}: Deployment/v4/web not applied: "
                               'Deployment in version "v1" cannot be handled as a Deployment: '
                               f'strict decoding error: unknown field "{TYPO_PATH}"'), lines
    assert lines[-1] == "remora: nothing applied: 1 object(s) refused by --validate=strict"
    assert not state.exists()
    result = CliRunner().invoke(cli, ["up", "-f", str(manifest), "--validate=warn",
                                      "--state-dir", str(state)], standalone_mode=False)
    assert isinstance(result.exception, PrivilegeError), result.exception
    assert "refused" not in result.stderr
    assert not state.exists()
