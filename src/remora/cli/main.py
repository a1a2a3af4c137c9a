"""The `remora` command tree.

Subcommands live in their own modules and are imported only when used, so `remora --help`
stays fast and a command's heavy imports (asyncio proxy, cryptography) never slow the
others. Each entry maps a command name to "module:attribute" of a click command; a
command whose module is not part of this build is simply not listed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

import remora
from remora import __version__
from remora.errors import RemoraError

# `remora --version` also says which copy runs and with which interpreter: two clones on
# one machine each have their own, and scripts/install reports the one it replaced.
# Its second line says whether `remora proxy` runs the mypyc-compiled hot modules
# (remora/native.py): "native: yes (N modules)" or "native: no (why)".
_WHERE = f"from {Path(remora.__file__).parent} (python {sys.executable})"


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from remora import native

    click.echo(f"remora, version {__version__} {_WHERE}")
    click.echo(f"native: {native.status()}")
    ctx.exit()

COMMANDS: dict[str, str] = {
    "capture": "remora.cli.capture:capture",
    "proxy": "remora.cli.proxy:proxy",
    "explain": "remora.cli.explain:explain",
    "demo": "remora.cli.demo:demo",
    "up": "remora.cli.lab:up",
    "down": "remora.cli.lab:down",
    "apply": "remora.cli.lab:apply",
    "delete": "remora.cli.lab:delete",
    "create": "remora.cli.lab:create",
    "label": "remora.cli.lab:label",
    "get": "remora.cli.lab:get",
    "describe": "remora.cli.lab:describe",
    "logs": "remora.cli.lab:logs",
    "exec": "remora.cli.lab:exec_",
    "patch": "remora.cli.lab:patch",
    "rollout": "remora.cli.lab:rollout",
    "proxy-config": "remora.cli.proxy_config:proxy_config",
    "node": "remora.cli.node:node",
    "kubeconfig": "remora.cli.kubeapi:kubeconfig",
    "kube-inject": "remora.cli.kube_inject:kube_inject",
}


def _available() -> list[str]:
    names = []
    for name, target in COMMANDS.items():
        module = target.split(":", 1)[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_available())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":", 1)
        if importlib.util.find_spec(module_name) is None:
            return None
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version, the copy of remora that runs and its native build.")
def cli() -> None:
    """remora: Istio's sidecar data path on one Linux host, with real kernel networking."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="remora", standalone_mode=False)
    except RemoraError as exc:
        click.echo(f"remora: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
