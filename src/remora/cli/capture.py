"""`remora capture`: istio-iptables, the istio-init container's job, in a namespace.

Same flags, defaults and environment variables as Istio's istio-iptables (the options are
generated from remora.capture.config.FLAGS), plus `--verify` to check that exactly these
rules are installed. See docs/capture.md.
"""

from __future__ import annotations

import os
from typing import Any

import click

from remora import netns
from remora.capture import apply as capture_apply
from remora.capture.config import FLAGS, IGNORED_VALUE_FLAGS, build_config
from remora.capture.runner import RecordingRunner


def _options(func: Any) -> Any:
    for flag in reversed(FLAGS):
        names = [f"--{flag.long}"] + ([f"-{flag.short}"] if flag.short else [])
        env = f" [env: {', '.join(flag.env)}]" if flag.env else ""
        default = f" [default: {flag.default}]" if flag.default not in ("", False) else ""
        text = flag.help + default + env
        if flag.kind == "bool":
            func = click.option(*names, flag.field, is_flag=True, flag_value=True,
                                default=None, help=text)(func)
        else:
            func = click.option(*names, flag.field, default=None, metavar="TEXT",
                                help=text)(func)
    for name in IGNORED_VALUE_FLAGS:
        func = click.option(f"--{name}", f"ignored_{name}", default=None, hidden=True)(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_options
@click.option("--verify", "verify_only", is_flag=True,
              help="Check that exactly these rules and routing are installed; change nothing.")
def capture(verify_only: bool, **values: Any) -> None:
    """Install Istio's sidecar capture rules (istio-iptables) in a network namespace.

    \b
    Environment-only settings, as in Istio:
      ISTIO_OUTBOUND_OWNER_GROUPS          groups whose outbound traffic is captured [*]
      ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE  groups never captured
      ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR    loopback CIDR [127.0.0.1/32]
      ENVOY_USER                           user whose uid is the -u default [istio-proxy]

    \b
    Example (what Istio's injector runs in istio-init):
      remora capture --network-namespace pod1 -p 15001 -z 15006 -u 1337 -m REDIRECT \\
        -i '*' -x "" -b '*' -d 15090,15021,15020
    """
    given = {k: v for k, v in values.items() if not k.startswith("ignored_")}
    config = build_config(given, os.environ)
    path = netns.resolve(config.network_namespace) if config.network_namespace else None
    where = f"namespace {config.network_namespace}" if path else "the current namespace"
    if config.dry_run:
        recorder = RecordingRunner()
        outcome = capture_apply.apply(config, path, runner=recorder)
        click.echo(recorder.transcript())
        for note in outcome.notes:
            click.echo(f"# {note}", err=True)
        return
    if verify_only:
        result = capture_apply.verify(config, path)
        for line in result.missing:
            click.echo(f"missing: {line}")
        for line in result.unexpected:
            click.echo(f"unexpected: {line}")
        click.echo(f"capture rules in {where}: {'OK' if result.ok else 'DIFFERENT'}")
        if not result.ok:
            raise SystemExit(1)
        return
    if config.cleanup_only:
        outcome = capture_apply.cleanup(config, path)
        click.echo(f"capture: cleaned up {where}"
                   + (f" ({'; '.join(outcome.notes)})" if outcome.notes else ""))
        return
    outcome = capture_apply.apply(config, path)
    rs = outcome.ruleset
    routing = (f"; TPROXY routing fwmark {rs.routing.mark} -> table {rs.routing.table}"
               if rs.routing else "")
    click.echo(f"capture: {outcome.action} ({outcome.rules}{routing}) in {where}")
