"""`remora kubeconfig`: the path of a kubeconfig for the lab's Kubernetes API, for the
user's own tools: `KUBECONFIG=$(remora kubeconfig) kubectl get pods -A` (docs/kubeapi.md)."""

from __future__ import annotations

import click

from remora.errors import RemoraError
from remora.kubeapi import certs
from remora.lab import session

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=CONTEXT)
@click.option("--state-dir", envvar="REMORA_STATE_DIR", default=None,
              help="the lab's state directory [default: $REMORA_STATE_DIR, else /var/lib/remora]")
def kubeconfig(state_dir: str | None) -> None:
    """Print the path of the kubeconfig for the lab's Kubernetes API."""
    directory = session.state_dir(state_dir)
    session.connect(directory)  # a clear error when no lab runs there
    path = certs.kubeconfig_path(directory)
    if not path.exists():
        raise RemoraError(f"the lab at {directory} serves no Kubernetes API (no "
                          f"{path.name})", f"see {directory / 'daemon.log'} for why it did "
                          "not start; `remora down` then `remora up` starts it again")
    click.echo(str(path))
