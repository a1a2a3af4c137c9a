"""The image map: what runs for a container whose image cannot be pulled here.

Kubelet would pull the image and run its entrypoint; the lab has no images, so a
container without `command` runs the local command its image maps to, with the
container's `args` appended (as Kubernetes appends args to the entrypoint). Built in:
the seed's two Go programs, as remora's own demo apps, and their gRPC versions
(`vasth/simple-grpc-server`, `vasth/simple-grpc-client`: remora.apps.grpc_*). A user
extends or overrides the map with a YAML file (`remora up --image-map FILE`):

    images:
      vasth/simple-server: [python3, -m, remora.apps.simple_server]
      nginx: "python3 -m http.server 80"      # a string is split like a shell would

Image names are matched as written, then without registry `docker.io/`, `library/`, a
`:tag` or an `@digest`, so `docker.io/vasth/simple-server:latest` finds the seed's entry.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from remora.errors import RemoraError
from remora.resources.loader import yaml_problem


def builtin() -> dict[str, list[str]]:
    python = sys.executable
    return {
        "vasth/simple-server": [python, "-m", "remora.apps.simple_server"],
        "vasth/simple-client": [python, "-m", "remora.apps.simple_client"],
        # the seed's pair told over gRPC (remora demo --grpc; names of our own)
        "vasth/simple-grpc-server": [python, "-m", "remora.apps.grpc_server"],
        "vasth/simple-grpc-client": [python, "-m", "remora.apps.grpc_client"],
    }


def normalise(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.removeprefix("library/")


def parse(text: str, source: str) -> dict[str, list[str]]:
    """A user's image map file -> {image: argv}; errors name the entry and the fix."""
    fix = "write `images:` followed by `IMAGE: [COMMAND, ARG, ...]` lines (docs/lab.md)"
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RemoraError(f"image map {source}: not valid YAML ({yaml_problem(exc)})",
                          fix) from None
    if isinstance(data, dict) and set(data) == {"images"}:
        data = data["images"]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RemoraError(f"image map {source}: expected a mapping of images to commands", fix)
    out: dict[str, list[str]] = {}
    for image, command in data.items():
        if isinstance(command, str):
            argv = shlex.split(command)
        elif isinstance(command, list) and all(isinstance(a, (str, int)) for a in command):
            argv = [str(a) for a in command]
        else:
            raise RemoraError(f"image map {source}: entry {image!r} is not a command "
                              "(a list of strings or one string)", fix)
        if not argv:
            raise RemoraError(f"image map {source}: entry {image!r} has an empty command", fix)
        out[str(image)] = argv
    return out


class ImageMap:
    def __init__(self, entries: dict[str, list[str]] | None = None) -> None:
        self.entries = {**builtin(), **(entries or {})}

    @classmethod
    def from_file(cls, path: str | Path | None) -> ImageMap:
        if not path:
            return cls()
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise RemoraError(f"image map {p} cannot be read ({exc.strerror})",
                              "give an existing YAML file to --image-map") from None
        return cls(parse(text, str(p)))

    def lookup(self, image: str) -> list[str] | None:
        found = self.entries.get(image)
        if found is None:
            wanted = normalise(image)
            found = next((v for k, v in self.entries.items() if normalise(k) == wanted), None)
        return None if found is None else list(found)

    def command(self, container: dict[str, Any], where: str) -> list[str]:
        """The container's full argv: its own command, or its image's mapped one."""
        args = [str(a) for a in container.get("args") or []]
        if container.get("command"):
            return [str(a) for a in container["command"]] + args
        image = str(container.get("image") or "")
        mapped = self.lookup(image)
        if mapped is None:
            raise RemoraError(
                f"{where}: container {container.get('name')!r} has no command and image "
                f"{image!r} is not in the image map (images cannot be pulled here)",
                f"add `{normalise(image) or 'IMAGE'}: [COMMAND, ...]` to an image map file "
                "and pass it with `remora up --image-map FILE`, or give the container a "
                "command")
        return mapped + args
