"""The image map: built-in seed images, name normalisation, user files, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from remora.errors import RemoraError
from remora.lab.images import ImageMap, normalise, parse


@pytest.mark.parametrize("image", ["vasth/simple-server", "vasth/simple-server:latest",
                                   "docker.io/vasth/simple-server",
                                   "docker.io/vasth/simple-server@sha256:abc"])
def test_seed_images_map_to_the_demo_apps(image: str) -> None:
    assert ImageMap().lookup(image) == [sys.executable, "-m", "remora.apps.simple_server"]
    assert ImageMap().lookup("vasth/simple-client") == [sys.executable, "-m",
                                                        "remora.apps.simple_client"]


def test_normalise_keeps_registry_ports_and_paths() -> None:
    assert normalise("library/nginx:1.25") == "nginx"
    assert normalise("registry.local:5000/team/app:v2") == "registry.local:5000/team/app"


def test_command_wins_and_args_append() -> None:
    images = ImageMap()
    assert images.command({"name": "c", "image": "x", "command": ["sleep"], "args": [5]},
                          "pod a/b") == ["sleep", "5"]
    assert images.command({"name": "c", "image": "vasth/simple-server",
                           "args": ["--port", "9"]}, "pod a/b")[-2:] == ["--port", "9"]


def test_unknown_image_names_the_container_and_the_fix() -> None:
    with pytest.raises(RemoraError) as err:
        ImageMap().command({"name": "web", "image": "nginx:1.25"}, "Deployment/ns/web")
    line = err.value.one_line()
    assert "Deployment/ns/web: container 'web'" in line
    assert "image 'nginx:1.25' is not in the image map" in line
    assert "`nginx: [COMMAND, ...]`" in line and "--image-map FILE" in line


def test_user_file_extends_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "images.yaml"
    f.write_text("images:\n  nginx: python3 -m http.server 80\n"
                 "  vasth/simple-server: [/bin/true]\n")
    images = ImageMap.from_file(f)
    assert images.lookup("nginx:latest") == ["python3", "-m", "http.server", "80"]
    assert images.lookup("vasth/simple-server") == ["/bin/true"]
    assert images.lookup("vasth/simple-client") is not None


@pytest.mark.parametrize(("text", "problem"), [
    ("images: [a, b]", "expected a mapping"),
    ("images:\n  x: {a: 1}\n", "entry 'x' is not a command"),
    ("images:\n  x: []\n", "entry 'x' has an empty command"),
    ("images: [\n", "not valid YAML"),
])
def test_bad_user_files_are_refused(text: str, problem: str) -> None:
    with pytest.raises(RemoraError) as err:
        parse(text, "m.yaml")
    assert problem in err.value.problem and err.value.fix


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RemoraError, match="cannot be read"):
        ImageMap.from_file(tmp_path / "nope.yaml")
