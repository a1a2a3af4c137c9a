"""`remora proxy` as a process on loopback: one-line errors, --concurrency workers with
merged stats, drain and quit through the admin API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.unit.proxy.proxy_helpers import addr, free_port, static_cluster, tcp_listener


def test_bad_config_is_one_line_naming_the_field(tmp_path: Path) -> None:
    doc = {"static_resources": {"listeners": [tcp_listener("l", free_port(), "c")],
                                "clusters": [static_cluster("c", 1)]}}
    doc["static_resources"]["clusters"][0]["dns_lookup_family"] = "V4_ONLY"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    result = subprocess.run([sys.executable, "-m", "remora", "proxy", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"remora: error: {path}: static_resources.clusters[0].dns_lookup_family: unknown or "
        "unsupported "
        "field 'dns_lookup_family' in Cluster (fix: remove it, or run this config on a real "
        "Envoy (remora proxy implements a documented subset of Envoy v3 and never ignores a "
        "field))"]


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_ready(aport: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, "proxy exited"
        try:
            if _get(aport, "/ready")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "proxy did not become ready"
        time.sleep(0.05)


def test_concurrency_workers_merged_stats_drain_and_quit(tmp_path: Path) -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(64)
    lport, aport = free_port(), free_port()
    doc = {"admin": {"address": addr("127.0.0.1", aport)},
           "static_resources": {"listeners": [tcp_listener("l", lport, "c")],
                                "clusters": [static_cluster("c", upstream.getsockname()[1])]}}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.Popen([sys.executable, "-m", "remora", "proxy", "-c", str(path),
                             "--concurrency", "2"], stderr=subprocess.PIPE)
    try:
        _wait_ready(aport, proc)
        # no pause: both workers' SO_REUSEPORT sockets are bound before the fork
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", lport))
            conn, _ = upstream.accept()
            s.close()
            conn.close()
        deadline = time.monotonic() + 5
        while "tcp.l.downstream_cx_total: 12\n" not in _get(aport, "/stats")[1]:
            assert time.monotonic() < deadline, _get(aport, "/stats")[1]
            time.sleep(0.1)
        assert "server.concurrency: 2" in _get(aport, "/stats?filter=server")[1]
        assert _get(aport, "/drain_listeners", "POST")[0] == 200
        time.sleep(0.3)
        refused = 0
        for _ in range(8):
            try:
                socket.create_connection(("127.0.0.1", lport), timeout=1).close()
            except ConnectionRefusedError:
                refused += 1
        assert refused == 8  # every worker stopped accepting
        assert _get(aport, "/quitquitquit", "POST")[0] == 200
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.close()


def test_file_flush_interval_msec_holds_access_log_lines_that_long(tmp_path: Path) -> None:
    """Envoy's --file-flush-interval-msec: a connection's line is written once the
    interval has passed, not at remora's default 10 ms; /server_info shows the value."""
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    lport, aport = free_port(), free_port()
    log = tmp_path / "access.log"
    doc = {"admin": {"address": addr("127.0.0.1", aport)},
           "static_resources": {"listeners": [tcp_listener("l", lport, "c", str(log))],
                                "clusters": [static_cluster("c", upstream.getsockname()[1])]}}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.Popen([sys.executable, "-m", "remora", "proxy", "-c", str(path),
                             "--file-flush-interval-msec", "1500"])
    try:
        _wait_ready(aport, proc)
        info = json.loads(_get(aport, "/server_info")[1])
        assert info["command_line_options"]["file_flush_interval"] == "1.5s"
        s = socket.create_connection(("127.0.0.1", lport))
        conn, _ = upstream.accept()
        s.close()
        conn.close()
        closed = time.monotonic()
        deadline = closed + 10
        while not log.exists() or not log.read_text():
            assert time.monotonic() < deadline, "no access-log line"
            time.sleep(0.02)
        waited = time.monotonic() - closed
        assert waited > 1.0, waited  # held for the interval (the default writes in 10 ms)
        assert log.read_text().count("\n") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.close()


def test_file_flush_interval_msec_must_be_positive(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "remora", "proxy", "-c", "x.json",
                             "--file-flush-interval-msec", "0"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--file-flush-interval-msec" in result.stderr


def test_group_without_the_privilege_is_one_line(tmp_path: Path) -> None:
    # `--group 1337` calls setgroups(2)/setgid(2), which need CAP_SETGID: without it (a
    # user, or here root with CAP_SETGID/CAP_SETUID out of the bounding set, so the exec'd
    # process has neither) the answer is one line naming the flag and the fix (it was a
    # PermissionError traceback from os.setgroups)
    import os
    import shutil

    doc = {"static_resources": {"listeners": [tcp_listener("l", free_port(), "c")],
                                "clusters": [static_cluster("c", 1)]}}
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(doc))
    argv = [sys.executable, "-m", "remora", "proxy", "-c", str(path), "--group", "1337",
            "--mode", "validate"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed as root"
        argv = [setpriv, "--bounding-set", "-setgid,-setuid", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        "remora: error: --group 1337: switching to gid 1337 needs root (CAP_SETGID/"
        "CAP_SETUID): Operation not permitted (fix: run remora proxy as root, or drop "
        "--group 1337)"], result.stderr
