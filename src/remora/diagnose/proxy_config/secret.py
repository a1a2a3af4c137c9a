"""``remora proxy-config secret POD``: the sidecar's certificates, as istioctl shows them.

istioctl/pkg/writer/envoy/configdump/secret.go PrintSecretSummary: a tabwriter table
(padding 5) ``RESOURCE NAME  TYPE  STATUS  VALID CERT  SERIAL NUMBER  NOT AFTER
NOT BEFORE``, one row per SDS secret: ``default`` (TYPE ``Cert Chain``) and ``ROOTCA``
(TYPE ``CA``), STATUS ``ACTIVE`` (``WARMING`` when the secret cannot be read yet), VALID
CERT whether now is inside the validity window, the serial in lower-case hex, times in
RFC 3339 UTC. The rows come either from a pod's config directory (the ``sds/*.json``
files the control plane writes, which name the PEM files) or from an Envoy
``/config_dump``'s SecretsConfigDump (``-o json`` prints those secrets).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from remora.diagnose.proxy_config.table import tabwrite
from remora.errors import RemoraError

HEADER = "RESOURCE NAME\tTYPE\tSTATUS\tVALID CERT\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE"
SECRETS_DUMP = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"


@dataclass(frozen=True)
class SecretItem:
    name: str
    type: str  # "Cert Chain" | "CA" (the certificate's basic constraints); "" without one
    state: str  # "ACTIVE" | "WARMING" | "UNINITIALIZED"
    cert: x509.Certificate | None
    trust_domain: str = ""  # SPIFFE trust domain (validator config, or the URI SAN)

    def row(self, now: dt.datetime, with_trust_domain: bool = False) -> str:
        c = self.cert
        tail = f"\t{self.trust_domain}" if with_trust_domain else ""
        if c is None:
            return f"{self.name}\t{self.type}\t{self.state}\tfalse\t\t\t{tail}"
        valid = c.not_valid_before_utc < now < c.not_valid_after_utc
        # sds/util.go secretMetaFromCert: fmt.Sprintf("%032x", cert.SerialNumber)
        return (f"{self.name}\t{self.type}\t{self.state}\t{str(valid).lower()}\t"
                f"{c.serial_number:032x}\t{_rfc3339(c.not_valid_after_utc)}\t"
                f"{_rfc3339(c.not_valid_before_utc)}{tail}")


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(source: dict[str, Any]) -> bytes | None:
    """A DataSource's bytes (filename, inline_bytes, inline_string); None if unreadable."""
    try:
        if "filename" in source:
            return Path(source["filename"]).read_bytes()
        if "inline_bytes" in source:
            return base64.b64decode(source["inline_bytes"])
        if "inline_string" in source:
            return str(source["inline_string"]).encode()
    except (OSError, ValueError):
        return None
    return None


def _item(name: str, secret: dict[str, Any]) -> SecretItem:
    if "tls_certificate" in secret:
        kind, source = "Cert Chain", secret["tls_certificate"].get("certificate_chain", {})
    else:
        kind, source = "CA", secret.get("validation_context", {}).get("trusted_ca", {})
    data = _pem(source)
    cert = None
    if data:
        try:
            cert = x509.load_pem_x509_certificates(data)[0]  # the leaf comes first
        except ValueError:
            cert = None
    return SecretItem(name, kind, "ACTIVE" if cert is not None else "WARMING", cert)


def items_from_config_dir(config_dir: str | Path) -> list[SecretItem]:
    """The SDS secrets of a sidecar config written by the control plane."""
    sds = Path(config_dir) / "sds"
    files = sorted(sds.glob("*.json")) if sds.is_dir() else []
    if not files:
        raise RemoraError(f"no SDS secrets in {sds}",
                          "the pod has no mesh certificates (mTLS is off for this sidecar)")
    out = []
    for f in files:
        for res in json.loads(f.read_text()).get("resources", []):
            out.append(_item(str(res.get("name", f.stem)), res))
    return _sorted(out)


SPIFFE_VALIDATOR = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                    "SPIFFECertValidatorConfig")


def _inline(source: dict[str, Any]) -> bytes | None:
    """istioctl reads only inline bytes from a dump (a file name there is the sidecar's)."""
    try:
        if "inline_bytes" in source:
            return base64.b64decode(source["inline_bytes"])
        if "inline_string" in source:
            return str(source["inline_string"]).encode()
    except ValueError:
        return None
    return None


def _from_pem(name: str, state: str, data: bytes | None, trust_domain: str = "") -> SecretItem:
    """sds/util.go secretMetaFromCert: the first PEM block; TYPE from its CA flag; the
    trust domain from a spiffe:// URI SAN unless the validator named it."""
    cert = None
    if data:
        try:
            cert = x509.load_pem_x509_certificates(data)[0]
        except ValueError:
            cert = None
    if cert is None:
        return SecretItem(name, "", state, None, trust_domain)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not trust_domain:
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
                if uri.startswith("spiffe://"):
                    trust_domain = uri[len("spiffe://"):].split("/", 1)[0]
        except x509.ExtensionNotFound:
            pass
    return SecretItem(name, "CA" if is_ca else "Cert Chain", state, cert, trust_domain)


def _dump_items(name: str, secret: dict[str, Any], state: str) -> list[SecretItem]:
    """sds/util.go parseDynamicSecret: the certificate chain, else the trusted CA, else one
    row per trust domain of a SPIFFE validator (SPIRE federation: several ROOTCA rows)."""
    chain = _inline(secret.get("tls_certificate", {}).get("certificate_chain", {}))
    vc = secret.get("validation_context", {})
    ca = _inline(vc.get("trusted_ca", {}))
    if chain:
        return [_from_pem(name, state, chain)]
    if ca:
        return [_from_pem(name, state, ca)]
    tc = (vc.get("custom_validator_config") or {}).get("typed_config") or {}
    if tc.get("@type") == SPIFFE_VALIDATOR:
        return [_from_pem(name, state, _inline(td.get("trust_bundle", {})),
                          str(td.get("name", "")))
                for td in tc.get("trust_domains", []) or []]
    return [_from_pem(name, state, None)]


def items_from_config_dump(dump: dict[str, Any]) -> list[SecretItem]:
    """Secrets of an Envoy /config_dump (SecretsConfigDump) as istioctl lists them
    (sds/util.go GetEnvoySecrets): the warming ones, then the active ones, in the dump's
    order; an active secret at version "uninitialized" is UNINITIALIZED."""
    from remora.diagnose.proxy_config.dump import snake

    out: list[SecretItem] = []
    for conf in dump.get("configs", []):
        if conf.get("@type") != SECRETS_DUMP:
            continue
        conf = snake(conf)
        for entry in conf.get("dynamic_warming_secrets", []):
            out += _dump_items(entry.get("name", ""), entry.get("secret", {}), "WARMING")
        for entry in conf.get("dynamic_active_secrets", []):
            state = "UNINITIALIZED" if entry.get("version_info") == "uninitialized" \
                else "ACTIVE"
            out += _dump_items(entry.get("name", ""), entry.get("secret", {}), state)
    return out


def _sorted(items: list[SecretItem]) -> list[SecretItem]:
    # istioctl lists the workload certificate before the root
    return sorted(items, key=lambda i: (i.type != "Cert Chain", i.name))


def secret_table(items: list[SecretItem], now: dt.datetime | None = None,
                 include_type: bool = False) -> str:
    """sds/writer.go printSecretItemsTabular: a TRUST DOMAIN column when every secret has
    one (trust domain federation). ``include_type`` (`proxy-config all`): each name as
    ``secret/NAME`` under the same RESOURCE NAME header."""
    if not items:
        return "No secret items to show.\n"
    now = now or dt.datetime.now(dt.UTC)
    with_td = all(i.trust_domain for i in items)
    header = HEADER + ("\tTRUST DOMAIN" if with_td else "")
    if include_type:
        items = [dataclasses.replace(i, name=f"secret/{i.name}") for i in items]
    return tabwrite([header, *(i.row(now, with_td) for i in items)], padding=5)


def secret_json(items: list[SecretItem]) -> str:
    """``-o json``: the secrets as Envoy's SecretsConfigDump lists them (PEM inline)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    entries = []
    for i in items:
        pem = base64.b64encode(i.cert.public_bytes(Encoding.PEM)).decode() if i.cert else ""
        body = ({"tls_certificate": {"certificate_chain": {"inline_bytes": pem},
                                     "private_key": {"inline_bytes": "W3JlZGFjdGVkXQ=="}}}
                if i.type == "Cert Chain" else
                {"validation_context": {"trusted_ca": {"inline_bytes": pem}}})
        entries.append({"name": i.name, "secret": {"name": i.name, **body}})
    return json.dumps({"dynamicActiveSecrets": entries}, indent=2)


def secret_items(dump: dict[str, Any] | None, config_dir: str | Path | None = None
                 ) -> list[SecretItem]:
    """What ``proxy-config secret`` shows: the secrets of the sidecar's /config_dump
    (Envoy lists them), else those of the pod's config directory (remora proxy's dump
    has no secrets yet). Live, the workload certificate comes first whatever order the
    sidecar's dump has (Envoy's secret map is unordered); `--file` keeps the dump's order,
    as istioctl does."""
    items = _sorted(items_from_config_dump(dump)) if dump else []
    if not items and config_dir is not None:
        items = items_from_config_dir(config_dir)
    return items
