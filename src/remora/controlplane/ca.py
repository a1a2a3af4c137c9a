"""The mesh CA: a root kept in a state directory, short-lived SPIFFE workload certificates.

What istiod's CA (security/pkg/pki/ca) and pilot-agent's secret manager do, as files:

- the root (EC P-256, 10 years) is created once and persisted as ``root-cert.pem`` and
  ``root-key.pem`` (0600) in the state dir; a restarted control plane keeps its root, so
  sidecars keep trusting each other;
- a workload certificate carries one URI SAN, the SPIFFE identity
  ``spiffe://cluster.local/ns/NAMESPACE/sa/SERVICEACCOUNT``, and an empty subject, as
  Istio's do (security/pkg/pki/util/generate_cert.go); it lives 24h by default
  (SECRET_TTL) and is re-issued once half its life is gone (pilot-agent rotates at
  SECRET_GRACE_PERIOD_RATIO 0.5);
- the sidecar gets ``cert-chain.pem``, ``key.pem`` and ``root-cert.pem`` (Istio's
  /etc/certs names), each replaced by rename so a reader never sees half a file; the
  proxy loads them for each new handshake, so open connections are not dropped.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from remora.errors import RemoraError

TRUST_DOMAIN = "cluster.local"
DEFAULT_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
GRACE_RATIO = 0.5
CERT_CHAIN = "cert-chain.pem"
KEY = "key.pem"
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"


def spiffe_id(namespace: str, service_account: str = "default",
              trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account or 'default'}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


SIDECAR_UID = 1337  # istio-proxy's uid/gid: the key is readable by the sidecar only


def write_atomic(path: Path, data: bytes, mode: int = 0o644, owner: int | None = None) -> None:
    """Replace PATH by rename (same directory), so readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, owner, owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class WorkloadCert:
    cert_pem: bytes
    key_pem: bytes
    identity: str

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in ext.value.get_values_for_type(x509.UniformResourceIdentifier)]


def rotation_due(cert: x509.Certificate, now: dt.datetime | None = None,
                 ratio: float = GRACE_RATIO) -> bool:
    """True once RATIO of the certificate's life has passed (or it is not yet valid)."""
    now = now or _now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return True
    return now >= start + (end - start) * ratio


class CertificateAuthority:
    """The root in ``state_dir`` (created on first use) and what it signs."""

    def __init__(self, state_dir: str | Path, trust_domain: str = TRUST_DOMAIN) -> None:
        self.dir = Path(state_dir)
        self.trust_domain = trust_domain
        cert_path, key_path = self.dir / ROOT_CERT, self.dir / ROOT_KEY
        if cert_path.exists() and key_path.exists():
            try:
                self.root = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            except ValueError as exc:
                raise RemoraError(f"the CA files in {self.dir} are unreadable: {exc}",
                                  f"remove {cert_path} and {key_path} to start a new root "
                                  "(every workload certificate is then re-issued)") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise RemoraError(f"{key_path} is not an EC key", "remove it to start a new root")
            self.key = key
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.root = self._self_signed()
            write_atomic(key_path, self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), 0o600)
            write_atomic(cert_path, self.root_pem)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def _self_signed(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain)])
        now = _now()
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + ROOT_TTL)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))

    def issue(self, namespace: str, service_account: str = "default",
              ttl: dt.timedelta = DEFAULT_TTL, now: dt.datetime | None = None,
              identity: str | None = None) -> WorkloadCert:
        """A workload certificate; IDENTITY overrides the SPIFFE URI (tests of a wrong
        identity), NOW backdates it (tests of an expired one)."""
        now = now or _now()
        uri = identity or spiffe_id(namespace, service_account, self.trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(self.root.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(seconds=60))  # clock skew, as Istio
                .not_valid_after(now + ttl)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return WorkloadCert(cert.public_bytes(serialization.Encoding.PEM), key_pem, uri)

    def write_workload(self, directory: str | Path, wc: WorkloadCert) -> None:
        """cert-chain.pem (workload + root), key.pem, root-cert.pem. The chain is written
        last: the proxy reloads when it changes, and by then the new key is in place."""
        d = Path(directory)
        write_atomic(d / ROOT_CERT, self.root_pem)
        write_atomic(d / KEY, wc.key_pem, 0o600, owner=SIDECAR_UID)
        write_atomic(d / CERT_CHAIN, wc.cert_pem + self.root_pem)

    def ensure_workload(self, directory: str | Path, namespace: str,
                        service_account: str = "default", ttl: dt.timedelta = DEFAULT_TTL,
                        now: dt.datetime | None = None) -> bool:
        """Issue and write a certificate unless a current one (same identity, same root,
        not past half its life) is there. True when files were (re)written."""
        d = Path(directory)
        want = spiffe_id(namespace, service_account, self.trust_domain)
        try:
            cert = x509.load_pem_x509_certificate((d / CERT_CHAIN).read_bytes())
            root = (d / ROOT_CERT).read_bytes()
            (d / KEY).stat()
        except (OSError, ValueError):
            cert = None
            root = b""
        if cert is not None and root == self.root_pem and uri_sans(cert) == [want] \
                and not rotation_due(cert, now):
            return False
        self.write_workload(d, self.issue(namespace, service_account, ttl, now))
        return True


def parse_ttl(text: str) -> dt.timedelta:
    """'24h', '90m', '30s' (SECRET_TTL's Go duration, the common units)."""
    units = {"h": 3600, "m": 60, "s": 1}
    try:
        value = float(text[:-1])
        seconds = value * units[text[-1]]
    except (KeyError, ValueError, IndexError) as exc:
        raise RemoraError(f"bad certificate TTL {text!r}", "give e.g. 24h, 90m or 600s") from exc
    if seconds <= 0:
        raise RemoraError(f"bad certificate TTL {text!r}: must be positive", "give e.g. 24h")
    return dt.timedelta(seconds=seconds)
