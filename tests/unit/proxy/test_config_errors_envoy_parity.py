"""`remora proxy -c FILE`'s one-line config errors against what Envoy 1.40 says for the
same file (`envoy --mode validate -c FILE`): Envoy starts with "error initializing
configuration 'FILE'" and names the message type ("invalid JSON in
envoy.config.bootstrap.v3.Bootstrap", "...typed_config.<any>: message
envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy ... no such field"); remora's line
names the same file and type, the field path, and a fix. Needs the envoy binary; no root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from remora.errors import RemoraError
from remora.proxy import process
from tests.proxyharness import envoy_validate
from tests.unit.proxy.proxy_helpers import addr

pytestmark = pytest.mark.envoy

TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TC_AT = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def _bootstrap(typed_config: object) -> dict[str, object]:
    return {"static_resources": {
        "listeners": [{"name": "l", "address": addr("127.0.0.1", 10000), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                          "typed_config": typed_config}]}]}],
        "clusters": [{"name": "c", "type": "STATIC", "connect_timeout": "1s",
                      "load_assignment": {"cluster_name": "c", "endpoints": [
                          {"lb_endpoints": [{"endpoint": {"address": addr("127.0.0.1",
                                                                          10001)}}]}]}}]}}


TCP = {"@type": f"type.googleapis.com/{TCP_PROXY}", "stat_prefix": "t", "cluster": "c"}


def _both(path: Path) -> tuple[str, RemoraError]:
    """What Envoy said refusing PATH, and remora's error for it."""
    ok, said = envoy_validate(path, level="critical")
    assert not ok, said
    assert f"error initializing configuration '{path}'" in said, said
    with pytest.raises(RemoraError) as info:
        process.load(str(path), 1)
    return " ".join(said.split()), info.value


@pytest.mark.parametrize("name, text", [
    ("list.yaml", "- static_resources: {}\n"),
    ("list.json", '[{"static_resources": {}}]\n'),
], ids=["yaml", "json"])
def test_a_bootstrap_that_is_a_list_names_file_type_and_fix(tmp_path: Path, name: str,
                                                            text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    envoy, err = _both(path)
    assert "invalid JSON in envoy.config.bootstrap.v3.Bootstrap" in envoy
    assert "expected '{'" in envoy
    assert err.one_line() == (
        f"{path}: the bootstrap is a list of 1 item, not an object "
        "(envoy.config.bootstrap.v3.Bootstrap) (fix: write the bootstrap as the object "
        "itself: drop the list around it (the leading \"- \" in YAML, the [ ] in JSON))")


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    envoy, err = _both(path)
    assert "Unable to convert YAML as JSON" in envoy
    assert str(err) == f"{path}: the file is empty (no envoy.config.bootstrap.v3.Bootstrap)"
    assert err.fix and "static_resources" in err.fix


def test_unknown_field_in_a_typed_config_names_its_type(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_bootstrap({**TCP, "bogus_field": 1})))
    envoy, err = _both(path)
    assert f"{TC_AT}.<any>: message {TCP_PROXY}" in envoy
    assert "no such field: 'bogus_field'" in envoy
    assert str(err) == (f"{path}: {TC_AT}.bogus_field: unknown or unsupported field "
                        f"'bogus_field' in {TCP_PROXY}")
    assert err.fix and err.fix.startswith("remove it")


def test_a_typed_config_that_is_a_list_is_an_any(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(json.dumps(_bootstrap([TCP])))  # JSON is YAML
    envoy, err = _both(path)
    assert f"{TC_AT}: message google.protobuf.Any" in envoy
    assert str(err) == (f"{path}: {TC_AT}: expected an object (google.protobuf.Any), "
                        "got a list of 1 item")
    assert err.fix and "drop the list around it" in err.fix


def test_the_cli_prints_it_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- static_resources: {}\n")
    result = subprocess.run([sys.executable, "-m", "remora", "proxy", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"remora: error: {path}: the bootstrap is a list of 1 item")
