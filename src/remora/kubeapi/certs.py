"""The API's serving certificate (from the lab's CA), its bearer token and the kubeconfig
that `remora kubeconfig` prints the path of.

Files, in the state directory (0600 where they hold a secret):
  kubeapi/tls.crt, kubeapi/tls.key   the serving certificate: 127.0.0.1 and localhost,
                                     signed by the lab's root (ca/root-cert.pem)
  kubeapi/token                      the bearer token
  kubeconfig                         cluster (server, CA data), user (token), context
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from remora.controlplane.ca import CertificateAuthority, write_atomic

CA_DIR = "ca"  # the lab's CA (remora.lab.settings.CA_DIR)
CONTEXT = "remora"
SERVING_TTL = dt.timedelta(days=365)


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path
    token: str
    ca_pem: bytes


def directory(state_dir: Path) -> Path:
    return state_dir / "kubeapi"


def kubeconfig_path(state_dir: Path) -> Path:
    return state_dir / "kubeconfig"


def ensure(state_dir: Path) -> Credentials:
    """The serving certificate and token, made on first use and kept across restarts."""
    d = directory(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority(state_dir / CA_DIR)
    cert_path, key_path, token_path = d / "tls.crt", d / "tls.key", d / "token"
    current = None
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key_path.stat()
    except (OSError, ValueError):
        current = None
    now = dt.datetime.now(dt.UTC)
    if current is None or current.issuer != ca.root.subject or \
            current.not_valid_after_utc < now + dt.timedelta(days=1):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            "remora-kubeapi")]))
                .issuer_name(ca.root.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + SERVING_TTL)
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca.key.public_key()), critical=False)
                .sign(ca.key, hashes.SHA256()))
        write_atomic(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    try:
        token = token_path.read_text().strip()
    except OSError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_atomic(token_path, token.encode() + b"\n", 0o600)
    return Credentials(cert_path, key_path, token, ca.root_pem)


def kubeconfig(server: str, creds: Credentials) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT, "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(creds.ca_pem).decode()}}],
        "users": [{"name": CONTEXT, "user": {"token": creds.token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT,
                                                    "namespace": "default"}}],
    }
    return str(yaml.safe_dump(doc, sort_keys=False))


def write_kubeconfig(state_dir: Path, server: str, creds: Credentials) -> Path:
    path = kubeconfig_path(state_dir)
    write_atomic(path, kubeconfig(server, creds).encode(), 0o600)
    return path
