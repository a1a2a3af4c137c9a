"""`remora demo`: replay the seed's story end to end (remora.lab.demo, docs/lab.md)."""

from __future__ import annotations

import click

from remora.errors import UsageError
from remora.lab import demo as lab_demo
from remora.lab import session
from remora.lab import settings as lab_settings
from remora.node import naming


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cleanup", is_flag=True, help="remove the lab at the end (default: keep it)")
@click.option("--sidecar", type=click.Choice(lab_settings.SIDECARS), default="remora",
              show_default=True, help="the sidecar proxy: `remora proxy` or a real Envoy")
@click.option("--mtls/--no-mtls", default=True, show_default=True,
              help="Istio's auto mTLS between sidecars (the seed's SNI in the access log)")
@click.option("--authz", is_flag=True,
              help="also show an AuthorizationPolicy allowing only the client's IP, enforced "
                   "by the server sidecar in REDIRECT and TPROXY mode")
@click.option("--grpc", is_flag=True,
              help="tell the story over gRPC (HTTP/2 through both sidecars)")
@click.option("--timeout", default=60.0, show_default=True, help="seconds each wait may take")
@click.option("--prefix", default=naming.DEFAULT_PREFIX, show_default=True,
              help="prefix of every namespace the lab creates")
@click.option("--pod-ip-start", default=77, show_default=True,
              help="first pod address (77: the seed's 10.20.0.77 server, .78 client)")
@click.option("--ip-family", type=click.Choice(["ipv4", "ipv6", "dual"]), default="ipv4",
              show_default=True,
              help="run the story over IPv6 (the app sees [::6]) or in a dual-stack lab")
@click.option("--state-dir", envvar="REMORA_STATE_DIR", default=None,
              help="the lab's state directory [default: $REMORA_STATE_DIR, else /var/lib/remora]")
def demo(cleanup: bool, sidecar: str, mtls: bool, authz: bool, grpc: bool, timeout: float,
         prefix: str, pod_ip_start: int, ip_family: str, state_dir: str | None) -> None:
    """Replay the seed: server sees 127.0.0.6, investigate, patch to TPROXY, see the client."""
    given = frozenset(n for n in ("sidecar", "mtls", "ip_family", "prefix")
                      if click.get_current_context().get_parameter_source(n)
                      == click.core.ParameterSource.COMMANDLINE)
    # every combination of flags is checked before anything starts (no lab, no namespace)
    if authz and not mtls:
        raise UsageError("--authz needs mTLS (AuthorizationPolicy is compiled into the "
                         "sidecars only with workload certificates), and --no-mtls turns it off",
                         "drop --no-mtls, or run `remora demo --no-mtls` without --authz")
    if grpc:
        from remora.lab import demo_grpc

        if authz:
            raise UsageError("--authz is not part of the gRPC story yet",
                             "run `remora demo --authz` and `remora demo --grpc` apart")
        if ip_family != "ipv4":
            raise UsageError("--grpc tells the story over IPv4 only for now",
                             "run `remora demo --grpc` and `remora demo --ip-family "
                             f"{ip_family}` apart")
        session.refuse_topology(session.state_dir(state_dir), "remora demo --grpc",
                                prefix=prefix if "prefix" in given else None)
        demo_grpc.run(session.state_dir(state_dir),
                      lab_settings.LabSettings(sidecar=sidecar, mtls=mtls), prefix=prefix,
                      pod_ip_start=pod_ip_start, cleanup=cleanup, timeout=timeout,
                      echo=click.echo, given=given)
        return
    session.refuse_topology(session.state_dir(state_dir), "remora demo",
                            prefix=prefix if "prefix" in given else None)
    lab_demo.run(session.state_dir(state_dir),
                 lab_settings.LabSettings(sidecar=sidecar, mtls=mtls, ip_family=ip_family),
                 prefix=prefix, pod_ip_start=pod_ip_start, cleanup=cleanup, timeout=timeout,
                 echo=click.echo, authz=authz, given=given)
