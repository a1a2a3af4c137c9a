"""`remora proxy-config secret`: istioctl's table from the SDS files of a pod."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from remora.controlplane.ca import CertificateAuthority
from remora.controlplane.files import write_config
from remora.controlplane.generate import generate
from remora.diagnose.proxy_config import secret as pcs
from remora.errors import RemoraError
from tests.unit.controlplane.seed import SERVER_IP, seed


def test_table_from_generated_config(tmp_path: Path) -> None:
    snap, server, _ = seed()
    ca = CertificateAuthority(tmp_path / "ca")
    ca.ensure_workload(tmp_path / "certs", "demo-to")
    write_config(generate(snap, server, SERVER_IP, str(tmp_path / "cfg"),
                          certs_dir=str(tmp_path / "certs")))
    items = pcs.items_from_config_dir(tmp_path / "cfg")
    assert [(i.name, i.type, i.state) for i in items] == [("default", "Cert Chain", "ACTIVE"),
                                                          ("ROOTCA", "CA", "ACTIVE")]
    leaf = items[0].cert
    assert leaf is not None
    text = pcs.secret_table(items, now=leaf.not_valid_before_utc + dt.timedelta(minutes=5))
    lines = text.splitlines()
    assert lines[0].split() == ["RESOURCE", "NAME", "TYPE", "STATUS", "VALID", "CERT",
                                "SERIAL", "NUMBER", "NOT", "AFTER", "NOT", "BEFORE"]
    assert lines[0].startswith("RESOURCE NAME     TYPE     ")  # tabwriter padding 5
    row = lines[1].split()
    assert row[:5] == ["default", "Cert", "Chain", "ACTIVE", "true"]
    assert row[5] == f"{leaf.serial_number:032x}"  # istioctl sds/util.go: "%032x"
    assert row[6] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    later = pcs.secret_table(items, now=leaf.not_valid_after_utc + dt.timedelta(seconds=1))
    assert later.splitlines()[1].split()[4] == "false"
    dumped = json.loads(pcs.secret_json(items))
    assert [e["name"] for e in dumped["dynamicActiveSecrets"]] == ["default", "ROOTCA"]


def test_config_dump_secrets_and_missing_ones(tmp_path: Path) -> None:
    dump = {"configs": [{"@type": pcs.SECRETS_DUMP, "dynamic_warming_secrets": [
        {"name": "default", "secret": {"name": "default", "tls_certificate": {
            "certificate_chain": {"filename": str(tmp_path / "absent.pem")}}}}]}]}
    [item] = pcs.items_from_config_dump(dump)
    assert item.state == "WARMING" and item.cert is None
    with pytest.raises(RemoraError, match="no SDS secrets"):
        pcs.items_from_config_dir(tmp_path)


def test_secret_items_prefers_the_dump_then_the_config_dir(tmp_path: Path) -> None:
    snap, server, _ = seed()
    CertificateAuthority(tmp_path / "ca").ensure_workload(tmp_path / "certs", "demo-to")
    write_config(generate(snap, server, SERVER_IP, str(tmp_path / "cfg"),
                          certs_dir=str(tmp_path / "certs")))
    empty_dump = {"configs": [{"@type": pcs.SECRETS_DUMP}]}
    from_dir = pcs.secret_items(empty_dump, tmp_path / "cfg")
    assert [i.name for i in from_dir] == ["default", "ROOTCA"]
    dump = {"configs": [{"@type": pcs.SECRETS_DUMP, "dynamic_active_secrets": [
        {"name": "ROOTCA", "secret": {"name": "ROOTCA", "validation_context": {
            "trusted_ca": {"filename": str(tmp_path / "certs" / "root-cert.pem")}}}}]}]}
    assert [i.name for i in pcs.secret_items(dump, tmp_path / "cfg")] == ["ROOTCA"]
