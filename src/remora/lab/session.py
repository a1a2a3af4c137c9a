"""Finding, starting and stopping the lab's node daemon (the CLI's side of it).

The node runtime owns the daemon, its socket protocol and its client
(remora.node.client); the lab starts it with MeshSetup as the pod-setup hook, after
writing its own settings (sidecar kind, image map) beside the node's state.
`REMORA_STATE_DIR` and `--state-dir` choose the lab, as for `remora node`, so tests and
several labs never share one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from remora.errors import PrivilegeError, RemoraError, UsageError
from remora.lab import settings as lab_settings
from remora.lab.settings import POD_SETUP, LabSettings
from remora.node import naming
from remora.node.client import DaemonExited, NodeClient, ensure_daemon, refuse_survivors
from remora.node.config import NodeConfig, default_state_dir, lab_command


def state_dir(option: str | None) -> Path:
    return Path(option) if option else default_state_dir()


def require_root(what: str) -> None:
    """WHAT is the command as the user typed it (`remora demo`, not the `up` inside it),
    so that the fix is the line to run."""
    if os.geteuid() != 0:
        raise PrivilegeError(f"{what} needs root (it creates network namespaces, links, "
                             "iptables rules and processes in them)",
                             f"run it with sudo: `sudo {what}`")


def connect(directory: Path) -> NodeClient:
    """A client of the running lab; a clear error when there is none."""
    client = NodeClient(directory)
    if not client.alive():
        sock = directory / "node.sock"
        if os.geteuid() != 0 and sock.exists() and not os.access(sock, os.W_OK):
            # connect(2) on a Unix socket needs write permission on it (unix(7)), and the
            # daemon's is root's 0600: the lab runs, this user may not talk to it. Saying
            # "not running" here (its pid cannot be signalled either) would be untrue.
            raise PrivilegeError(f"the lab at {directory} runs as root: its node daemon's "
                                 f"socket {sock} refuses uid {os.geteuid()}",
                                 "run the command with sudo")
        if not sock.exists() and os.geteuid() != 0:
            raise PrivilegeError(f"no lab is running at {directory} (or it is not readable "
                                 "without root)", "run `sudo remora up` first, and use sudo")
        if (directory / "remora.db").exists():
            raise client.not_running()  # pods (and DNS) outlive a killed daemon: say so
        raise RemoraError(f"no lab is running at {directory}",
                          "start it with `remora up` (or pass the --state-dir it uses)")
    return client


def fresh(directory: Path) -> bool:
    """No lab at DIRECTORY yet: no daemon answers and no store to adopt."""
    return not NodeClient(directory).alive() and not (directory / "remora.db").exists()


def up(directory: Path, settings: LabSettings, *, prefix: str = naming.DEFAULT_PREFIX,
       nodes: int = 1, pod_ip_start: int = 2, command: str = "remora up"
       ) -> tuple[NodeClient, bool]:
    """The running lab's client, starting the daemon first when none runs; COMMAND is
    the one the user ran (for the error without root).

    Returns (client, started). Settings only take effect for a daemon started here."""
    require_root(command)
    client = NodeClient(directory)
    if client.alive():
        return client, False
    if (directory / "remora.db").exists() and lab_settings.path(directory).exists():
        # The daemon died but the lab is there: the new one adopts its pods, and must run
        # their containers exactly as before (same sidecar), or it would replace them.
        settings = lab_settings.load(directory)
    settings = settings.check()
    lab_settings.save(directory, settings)
    config = NodeConfig(state_dir=directory, prefix=naming.check_prefix(prefix), nodes=nodes,
                        pod_ip_start=pod_ip_start, ip_family=settings.ip_family)
    new_store = not config.db_path.exists()
    try:
        return ensure_daemon(config, POD_SETUP), True
    except DaemonExited:
        lab_settings.remove(directory)
        if new_store:
            # the refused daemon's empty store would make the next `up` "adopt the pods
            # still running" of a lab that never ran; its daemon.log (which the error
            # names) stays
            for path in (config.db_path, *(config.db_path.with_name(config.db_path.name + s)
                                           for s in ("-wal", "-shm", "-journal"))):
                path.unlink(missing_ok=True)
        raise
    except RemoraError:
        lab_settings.remove(directory)
        raise


def differences(wanted: LabSettings, running: LabSettings, given: set[str]) -> list[str]:
    """What a command explicitly asked for (GIVEN: option names) that the running lab does
    not do (settings only apply to a daemon being started), for a note to the user."""
    out = []
    if "sidecar" in given and wanted.sidecar != running.sidecar:
        out.append(f"sidecar {running.sidecar} (not {wanted.sidecar})")
    if "mtls" in given and wanted.mtls != running.mtls:
        out.append(f"mTLS {'on' if running.mtls else 'off'}")
    if "image_map" in given and wanted.image_map != running.image_map:
        out.append(f"image map {running.image_map or 'built-in'}")
    if "ip_family" in given and wanted.ip_family != running.ip_family:
        out.append(f"IP family {running.ip_family} (not {wanted.ip_family})")
    return out


def refuse_differences(directory: Path, wanted: LabSettings, given: set[str],
                       command: str) -> None:
    """Refuse, before anything starts or changes, a command that explicitly asks (GIVEN)
    for a sidecar, mTLS, image map or IP family other than the existing lab's: settings take effect
    only when a lab starts, and running the story on another sidecar than the one asked
    for would show the wrong proxy's behaviour under the right proxy's name."""
    if fresh(directory) or not lab_settings.path(directory).exists():
        return
    differ = differences(wanted, lab_settings.load(directory), given)
    if differ:
        raise RemoraError(f"the lab at {directory} runs with {', '.join(differ)}; settings "
                          "apply only when a lab starts",
                          f"`{lab_command('down', directory)}` first, then `{command}` "
                          "again (or drop the "
                          "option to use the lab as it is)")


def refuse_topology(directory: Path, command: str, *, nodes: int | None = None,
                    prefix: str | None = None) -> None:
    """Refuse, before anything starts or changes, a command that explicitly asks for a
    node count (NODES) or namespace prefix (PREFIX, None: not given) other than the
    running lab's: like the sidecar or the IP family, they take effect only when a lab
    starts, and a silent "already running ... 1 node(s)" left the user believing they had
    3. ``--nodes 0`` is refused whether a lab runs or not."""
    if nodes is not None and nodes < 1:
        raise UsageError(f"--nodes {nodes}: a lab needs at least one node",
                         f"use --nodes 1 or more, e.g. `{command} --nodes 1`")
    if nodes is None and prefix is None:
        return
    client = NodeClient(directory)
    if not client.alive():
        return  # a lab whose daemon died: the new daemon checks the prefix (runtime.start)
    info = client.ping()
    differ = []
    if nodes is not None and int(info.get("nodes") or 0) != nodes:
        differ.append(f"{info.get('nodes')} node(s) (not {nodes})")
    if prefix is not None and str(info.get("prefix")) != prefix:
        differ.append(f"prefix {info.get('prefix')!r} (not {prefix!r})")
    if differ:
        raise RemoraError(f"the lab at {directory} runs with {', '.join(differ)}; settings "
                          "apply only when a lab starts",
                          f"`{lab_command('down', directory)}` first, then `{command}` "
                          "again (or drop the option to use the lab as it is)")


def down(directory: Path) -> list[str]:
    """Remove everything the lab made, with its daemon or (if it died) from the store;
    returns when everything it stopped has exited, the daemon too (NodeClient.down)."""
    require_root("remora down")
    client = NodeClient(directory)
    if client.alive():
        removed = client.down()
    else:
        # imported here: the teardown's netlink (pyroute2) costs every other command
        # ~150 ms of start-up, and only `down` without a daemon needs it
        from remora.node import teardown
        removed = teardown.down(directory)
    removed += lab_settings.remove(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()  # the node's teardown left it for lab.json
    return refuse_survivors(directory, removed)
