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
              help="the lab's state directory [default: /var/lib/remora]")
def kubeconfig(state_dir: str | None) -> None:
    """Print the path of the kubeconfig for the lab's Kubernetes API."""
    directory = session.state_dir(state_dir)
    session.connect(directory)  # a clear error when no lab runs there
    path = certs.kubeconfig_path(directory)
    if not path.exists():
        raise RemoraError(f"the lab at {directory} has no kubeconfig (its daemon predates "
                          "the Kubernetes API)", "restart the lab: `remora down` then "
                          "`remora up`")
    click.echo(str(path))
