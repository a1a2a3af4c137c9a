"""`remora proxy`: the sidecar data plane, running an Envoy v3 bootstrap (docs/proxy.md)."""

from __future__ import annotations

import click

from remora.errors import PrivilegeError, UsageError


@click.command("proxy")
@click.option("-c", "--config-path", "config_path", required=True,
              type=click.Path(dir_okay=False),
              help="Envoy v3 bootstrap (JSON or YAML), as for `envoy -c`.")
@click.option("--concurrency", type=int, default=1, show_default=True,
              help="Worker processes sharing the listeners (SO_REUSEPORT).")
@click.option("--group", type=int, default=None,
              help="Run with this gid (Istio's sidecar: 1337) before opening any socket.")
@click.option("--user", type=int, default=None,
              help="Run with this uid (drops CAP_NET_ADMIN unless 0; not for TPROXY).")
@click.option("-l", "--log-level", default="info", show_default=True,
              type=click.Choice(["trace", "debug", "info", "warning", "warn", "error",
                                 "critical", "off"]),
              help="Log level (Envoy's names).")
@click.option("--base-id", type=int, default=None, hidden=True,
              help="Accepted for Envoy command-line compatibility; unused.")
@click.option("--mode", type=click.Choice(["serve", "validate"]), default="serve",
              show_default=True, help="validate: load and check the config, then exit.")
@click.option("--drain-time-s", "drain_time", type=click.IntRange(min=0), default=600,
              show_default=True,
              help="Envoy's: how long /drain_listeners?graceful drains before the "
                   "listeners stop, and how long an LDS update drains the connections of "
                   "the filter chains or listeners it replaced before closing them.")
@click.option("--drain-strategy", type=click.Choice(["gradual", "immediate"]),
              default="gradual", show_default=True,
              help="Envoy's: gradual closes more connections as the drain time passes, "
                   "immediate all at once.")
@click.option("--file-flush-interval-msec", "flush_ms", type=click.IntRange(min=1),
              default=10, show_default=True,
              help="Envoy's: how long access-log lines wait for their write at most "
                   "(Envoy's default is 10000; remora's shows a line at once).")
def proxy(config_path: str, concurrency: int, group: int | None, user: int | None,
          log_level: str, base_id: int | None, mode: str, drain_time: int,
          drain_strategy: str, flush_ms: int) -> None:
    """Run the sidecar proxy on an Envoy v3 bootstrap (static or file-based LDS/CDS/EDS)."""
    from remora.proxy import process
    from remora.proxy.access_log.sink import set_flush_interval

    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1", "pass --concurrency 1 or more")
    level = {"trace": "debug", "warn": "warning", "off": "critical"}.get(log_level, log_level)
    process.setup_logging(level)
    set_flush_interval(flush_ms / 1000)
    try:
        process.drop_privileges(group, user)
    except PermissionError as exc:
        # setgroups(2)/setgid(2)/setuid(2) need CAP_SETGID/CAP_SETUID: a user without them
        # gets one line, not a traceback (the lab starts its sidecars as root)
        given = [(f"--{flag} {v}", f"{ident} {v}") for flag, ident, v in (
            ("group", "gid", group), ("user", "uid", user)) if v is not None]
        flags = " ".join(f for f, _ in given)
        raise PrivilegeError(f"{flags}: switching to {' and '.join(i for _, i in given)} "
                             f"needs root (CAP_SETGID/CAP_SETUID): {exc.strerror}",
                             f"run remora proxy as root, or drop {flags}") from None
    server = process.load(config_path, concurrency)
    server.drain.drain_time = float(drain_time)
    server.drain.strategy = drain_strategy
    if mode == "validate":
        click.echo(f"configuration '{config_path}' OK")
        return
    options = {"config_path": config_path, "concurrency": concurrency, "base_id": str(base_id or 0),
               "log_level": log_level, "mode": "Serve",
               "file_flush_interval": f"{flush_ms / 1000:g}s"}
    raise SystemExit(process.run(server, options))
