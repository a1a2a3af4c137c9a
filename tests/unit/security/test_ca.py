"""The CA: persisted root, SPIFFE workload certificates, rotation at half life."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from remora.controlplane import ca
from remora.errors import RemoraError


def test_root_is_created_once_and_reused(tmp_path: Path) -> None:
    first = ca.CertificateAuthority(tmp_path / "state")
    second = ca.CertificateAuthority(tmp_path / "state")
    assert first.root_pem == second.root_pem
    assert (tmp_path / "state" / ca.ROOT_KEY).stat().st_mode & 0o777 == 0o600
    assert first.root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_workload_cert_has_spiffe_uri_san_and_chains_to_root(tmp_path: Path) -> None:
    authority = ca.CertificateAuthority(tmp_path)
    wc = authority.issue("demo-to", "simple-server", ttl=dt.timedelta(hours=2))
    cert = wc.cert
    assert ca.uri_sans(cert) == ["spiffe://cluster.local/ns/demo-to/sa/simple-server"]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(hours=2) <= life <= dt.timedelta(hours=2, minutes=2)
    cert.verify_directly_issued_by(authority.root)
    # OpenSSL accepts the chain and the key as a pair
    out = tmp_path / "pod"
    authority.write_workload(out, wc)
    ctx = ssl.create_default_context(cafile=str(out / ca.ROOT_CERT))
    ctx.load_cert_chain(str(out / ca.CERT_CHAIN), str(out / ca.KEY))


def test_default_service_account() -> None:
    assert ca.spiffe_id("demo", "") == "spiffe://cluster.local/ns/demo/sa/default"


def test_rotation_due_at_half_life(tmp_path: Path) -> None:
    authority = ca.CertificateAuthority(tmp_path)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = authority.issue("ns", ttl=dt.timedelta(hours=24), now=now).cert
    assert not ca.rotation_due(cert, now + dt.timedelta(hours=11))
    assert ca.rotation_due(cert, now + dt.timedelta(hours=12, minutes=1))
    assert ca.rotation_due(cert, now - dt.timedelta(hours=1))  # not yet valid


def test_ensure_workload_rotates_only_when_needed(tmp_path: Path) -> None:
    authority = ca.CertificateAuthority(tmp_path / "ca")
    pod = tmp_path / "pod"
    now = dt.datetime.now(dt.UTC)
    assert authority.ensure_workload(pod, "a", "sa1", now=now)
    serial = x509.load_pem_x509_certificate((pod / ca.CERT_CHAIN).read_bytes()).serial_number
    assert not authority.ensure_workload(pod, "a", "sa1", now=now + dt.timedelta(hours=1))
    # identity changed -> re-issued
    assert authority.ensure_workload(pod, "a", "sa2", now=now + dt.timedelta(hours=1))
    # past half life -> re-issued with a new serial
    assert authority.ensure_workload(pod, "a", "sa2", now=now + dt.timedelta(hours=13))
    new = x509.load_pem_x509_certificate((pod / ca.CERT_CHAIN).read_bytes())
    assert new.serial_number != serial
    assert ca.uri_sans(new) == ["spiffe://cluster.local/ns/a/sa/sa2"]


def test_unreadable_root_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ca.ROOT_CERT).write_text("garbage")
    (tmp_path / ca.ROOT_KEY).write_text("garbage")
    with pytest.raises(RemoraError, match="unreadable"):
        ca.CertificateAuthority(tmp_path)


def test_parse_ttl() -> None:
    assert ca.parse_ttl("90m") == dt.timedelta(minutes=90)
    with pytest.raises(RemoraError):
        ca.parse_ttl("soon")
