from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from remora.errors import RemoraError
from remora.node import etcfiles, process, supervisor
from remora.node.client import STILL_RUNNING, refuse_survivors, wait_gone
from remora.node.process import ProcessSpec


def test_plain_container_runs_through_ip_netns_exec() -> None:
    argv = process.wrapped_argv("remora-pod-1", ProcessSpec(["sleep", "1"]))
    assert argv == ["ip", "netns", "exec", "remora-pod-1", "sleep", "1"]


def test_sidecar_identity_uses_setpriv() -> None:
    redirect = process.wrapped_argv("ns", ProcessSpec(["proxy"], uid=1337, gid=1337))
    assert redirect == ["ip", "netns", "exec", "ns", "setpriv", "--reuid=1337", "--regid=1337",
                        "--clear-groups", "--", "proxy"]
    tproxy = process.wrapped_argv("ns", ProcessSpec(["proxy"], uid=0, gid=1337,
                                                    caps=("net_admin",)))
    # root keeps its capabilities; only the group changes
    assert tproxy == ["ip", "netns", "exec", "ns", "setpriv", "--reuid=0", "--regid=1337",
                      "--clear-groups", "--", "proxy"]
    user = process.wrapped_argv("ns", ProcessSpec(["proxy"], uid=1337, caps=("net_admin",)))
    assert "--ambient-caps=+net_admin" in user and "--inh-caps=+net_admin" in user


def test_process_identity_survives_only_for_the_same_process() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.05)
        ticks = process.start_ticks(proc.pid)
        assert ticks is not None
        assert process.cmdline(proc.pid) == ["sleep", "30"]
        own_netns = process.netns_inode(proc.pid)
        assert own_netns is not None
        assert process.matches(proc.pid, ticks, own_netns)
        assert not process.matches(proc.pid, ticks - 1, own_netns)  # a reused PID
        assert not process.matches(proc.pid, ticks, 1)  # other netns
        assert not process.matches(proc.pid, ticks, None)  # the pod's netns is gone
        assert process.terminate(proc.pid, ticks)
        proc.wait(timeout=5)
        assert not process.is_alive(proc.pid, ticks)
        assert not process.terminate(proc.pid, ticks)  # never signals a gone process
    finally:
        proc.kill()
        proc.wait()


def test_wrappers_are_recognised() -> None:
    assert process.in_wrapper(["ip", "netns", "exec", "x", "sleep"])
    assert process.in_wrapper(["setpriv", "--reuid=1", "--", "x"])
    assert not process.in_wrapper(["python3", "-m", "remora", "proxy"])


def test_restart_backoff_doubles_up_to_a_small_cap() -> None:
    waits = [supervisor.restart_backoff(n) for n in range(8)]
    # kubelet restarts the first exit at once, so CrashLoopBackOff follows a counted restart
    assert waits[:5] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert max(waits) == supervisor.BACKOFF_CAP == 5.0


def test_pod_etc_files(tmp_path: Path) -> None:
    folder = etcfiles.write("remora-pod-1", "demo-from", "172.16.0.10", "10.20.0.78",
                            "simple-client-1", root=tmp_path)
    assert (folder / "resolv.conf").read_text() == (
        "search demo-from.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 172.16.0.10\noptions ndots:5\n")
    assert "10.20.0.78\tsimple-client-1" in (folder / "hosts").read_text()
    etcfiles.remove("remora-pod-1", root=tmp_path)
    assert not tmp_path.exists()  # the emptied /etc/netns goes too


def test_a_signal_is_reported_as_128_plus_its_number() -> None:
    assert supervisor.exit_code(-9) == 137  # SIGKILL, as kubelet reports it
    assert supervisor.exit_code(-15) == 143
    assert supervisor.exit_code(3) == 3 and supervisor.exit_code(0) == 0


def test_wait_gone_returns_when_the_process_exits_and_names_it_when_it_does_not() -> None:
    """`down` waits, bounded, for what it stopped (the node daemon exits after its reply):
    a process still there at the deadline is named with its PID and what to do."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        ticks = process.start_ticks(child.pid)
        with pytest.raises(RemoraError) as refused:
            wait_gone(child.pid, ticks, 0.3, "the node daemon", f"kill {child.pid}")
        assert refused.value.problem == f"the node daemon (pid {child.pid}) is still " \
            "running 0.3s later"
        assert refused.value.fix == f"kill {child.pid}"
        threading.Timer(0.2, child.terminate).start()
        start = time.monotonic()
        wait_gone(child.pid, ticks, 10, "the node daemon", "")  # a zombie is gone
        assert time.monotonic() - start < 5
    finally:
        child.kill()
        child.wait()
    wait_gone(child.pid, None, 0, "", "")  # no start time: gone before


def test_a_process_down_could_not_end_is_named() -> None:
    assert refuse_survivors(Path("/s"), ["process 12", "netns x"]) == ["process 12", "netns x"]
    with pytest.raises(RemoraError) as refused:
        refuse_survivors(Path("/s"), ["process 12", f"{STILL_RUNNING}77"])
    assert refused.value.problem == ("the lab at /s is removed, but process(es) 77 it "
                                     "stopped are still running after SIGTERM and SIGKILL")
    assert "ps -o pid,stat,wchan,cmd -p 77" in (refused.value.fix or "")
