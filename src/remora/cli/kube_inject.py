"""`remora kube-inject -f FILE`: print manifests with Istio's sidecar injected, as
`istioctl kube-inject -f FILE` does (remora.controlplane.kube_inject)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from remora.controlplane.kube_inject import DEFAULT_IMAGE, MeshSettings, inject_text
from remora.errors import RemoraError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise RemoraError(f"cannot read {path}: {exc.strerror}",
                          "give an existing manifest file (or - for stdin)") from None


@click.command("kube-inject", context_settings=CONTEXT)
@click.option("-f", "--filename", required=True, help="manifest file ('-' for stdin)")
@click.option("--sidecar-image", default=DEFAULT_IMAGE, show_default=True,
              help="image of istio-init and istio-proxy (e.g. a remora sidecar image)")
@click.option("--meshConfigFile", "mesh_file", default=None,
              help="MeshConfig YAML (defaultConfig, trustDomain), as istioctl's flag")
@click.option("-o", "--output", "output", default=None, help="write here instead of stdout")
def kube_inject(filename: str, sidecar_image: str, mesh_file: str | None,
                output: str | None) -> None:
    """Print the manifests with Istio's sidecar injected (istioctl kube-inject)."""
    mesh = MeshSettings.from_yaml(_read(mesh_file), mesh_file) if mesh_file else None
    text = inject_text(_read(filename), filename, sidecar_image, mesh)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)
