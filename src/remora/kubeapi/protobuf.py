"""Kubernetes protobuf request bodies as the JSON client-go would have sent: bytes in,
dict out, pure.

client-go's typed clients send built-in kinds as `application/vnd.kubernetes.protobuf`
(kubectl create namespace|deployment|service): the magic b"k8s\\x00", then
a runtime.Unknown (typeMeta{apiVersion, kind}, raw, contentEncoding, contentType) whose
`raw` is the generated message of the kind (k8s.io/apimachinery pkg/runtime/serializer/
protobuf). The kind's message carries no TypeMeta; it comes from the envelope.

The message layouts are proto_schema.py's, generated from k8s.io/api and apimachinery's
generated.proto and types.go (scripts/gen_kube_proto_schema.py). The output follows
encoding/json over the Go types, so the lab's JSON path sees what it would have seen:
gogo-protobuf writes every non-pointer scalar even when zero, and the JSON encoder drops
those with `omitempty`; a pointer (`replicas: 0`) is kept; an embedded struct is inlined;
metav1.Time is RFC 3339 (a zero Time is `null`), IntOrString an int or a string,
resource.Quantity its string, []byte base64.

A field number this schema does not know (a newer client's field) is skipped with a
warning, as the lab's JSON path warns about and ignores a field it does not know.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from remora.kubeapi.messages import ApiError
from remora.kubeapi.proto_schema import MESSAGES

MAGIC = b"k8s\x00"

# (apiVersion, kind) of the envelope -> message; the kinds the lab accepts as bodies
KINDS = {("v1", "Namespace"): "core.Namespace", ("v1", "Pod"): "core.Pod",
         ("v1", "Service"): "core.Service", ("apps/v1", "Deployment"): "apps.Deployment",
         ("autoscaling/v1", "Scale"): "autoscaling.Scale",
         ("meta.k8s.io/v1", "DeleteOptions"): "meta.DeleteOptions",
         ("v1", "DeleteOptions"): "meta.DeleteOptions"}
PROTO_PACKAGES = {"core": "k8s.io.api.core.v1", "apps": "k8s.io.api.apps.v1",
                  "autoscaling": "k8s.io.api.autoscaling.v1",
                  "meta": "k8s.io.apimachinery.pkg.apis.meta.v1",
                  "runtime": "k8s.io.apimachinery.pkg.runtime",
                  "schema": "k8s.io.apimachinery.pkg.runtime.schema",
                  "intstr": "k8s.io.apimachinery.pkg.util.intstr",
                  "resource": "k8s.io.apimachinery.pkg.api.resource"}

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_VARINT_TYPES = {"int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool"}
_WIRE = {**{t: VARINT for t in _VARINT_TYPES}, "double": I64, "fixed64": I64,
         "sfixed64": I64, "float": I32, "fixed32": I32, "sfixed32": I32,
         "string": LEN, "bytes": LEN}


class Malformed(Exception):
    pass


def _full(message: str) -> str:
    pkg, _, name = message.partition(".")
    return f"{PROTO_PACKAGES.get(pkg, pkg)}.{name}"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise Malformed("varint longer than 10 bytes")


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """The wire's (number, wire type, raw value) triples: int for varint/fixed, bytes for
    length-delimited."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: Any
        if num == 0:
            raise Malformed("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == I64:
            if pos + 8 > len(buf):
                raise Malformed("truncated 64-bit field")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == I32:
            if pos + 4 > len(buf):
                raise Malformed("truncated 32-bit field")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise Malformed(f"field {num}: length {size} past the end")
            value, pos = buf[pos:pos + size], pos + size
        else:  # groups (3, 4) are proto2 features Kubernetes never uses
            raise Malformed(f"field {num}: wire type {wire}")
        out.append((num, wire, value))
    return out


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _scalar(type_name: str, wire: int, raw: Any, where: str) -> Any:
    if _WIRE[type_name] != wire:
        raise Malformed(f"{where}: wire type {wire} for a {type_name}")
    if type_name == "string":
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise Malformed(f"{where}: a string that is not UTF-8") from None
    if type_name == "bytes":
        return base64.b64encode(raw).decode()  # encoding/json's []byte
    if type_name == "bool":
        return raw != 0
    if type_name in ("int32", "sfixed32"):  # a negative int32 varint is sign-extended
        return _signed(raw, 32)
    if type_name in ("int64", "sfixed64"):
        return _signed(raw, 64)
    if type_name in ("uint32", "fixed32"):
        return raw & 0xFFFFFFFF
    if type_name in ("uint64", "fixed64"):
        return raw
    if type_name in ("sint32", "sint64"):
        return (raw >> 1) ^ -(raw & 1)
    if type_name == "double":
        return struct.unpack("<d", raw.to_bytes(8, "little"))[0]
    return struct.unpack("<f", raw.to_bytes(4, "little"))[0]  # float


def _duration(ns: int) -> str:
    """Go's time.Duration.String, which metav1.Duration's JSON is."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns, size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim(rest, 1_000_000_000) + "s"


def _trim(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def _rfc3339(seconds: int, nanos: int, micro: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanos // 1000:06d}Z" if micro else f"{stamp}Z"


class Decoder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def message(self, name: str, buf: bytes, where: str) -> Any:
        special = self._special(name, buf, where)
        if special is not _NOT_SPECIAL:
            return special
        schema = MESSAGES[name]
        out: dict[str, Any] = {}
        for num, wire, raw in fields(buf):
            spec = schema.get(num)
            if spec is None:
                self.warnings.append(
                    f"unknown field number {num} of {_full(name)} at {where or '.'} "
                    "(ignored: not in the lab's copy of k8s.io/api, see proto_schema.py)")
                continue
            key, type_name, flags = spec
            if key == "-":  # json:"-": encoding/json never writes it (Unknown.Raw)
                continue
            path = f"{where}.{key}" if where else key
            if "m" in flags:
                if wire != LEN:
                    raise Malformed(f"{path}: wire type {wire} for a map entry")
                key_type, value_type = type_name.split(",")
                entry = {n: (w, r) for n, w, r in fields(raw)}
                k = self._value(key_type, *entry.get(1, (_WIRE.get(key_type, LEN), _zero(
                    key_type))), path)
                v = self._value(value_type, *entry.get(2, (_WIRE.get(value_type, LEN),
                                                           _zero(value_type))), f"{path}[{k}]")
                out.setdefault(key, {})[k] = v
            elif "r" in flags:
                items = out.setdefault(key, [])
                if type_name in _WIRE and _WIRE[type_name] != LEN and wire == LEN:
                    packed = [(w, r) for _, w, r in fields(_packed(type_name, raw))]
                    items.extend(self._value(type_name, w, r, path) for w, r in packed)
                else:
                    items.append(self._value(type_name, wire, raw, f"{path}[{len(items)}]"))
            elif "i" in flags:
                if type_name in _WIRE or wire != LEN:
                    raise Malformed(f"{path}: an inlined field must be a message")
                inner = self.message(type_name, raw, where)
                out.update(inner)
            else:
                value = self._value(type_name, wire, raw, path)
                if type_name in _WIRE and "z" not in flags and value in ("", 0, False):
                    out.pop(key, None)  # omitempty: encoding/json leaves a zero out
                    continue
                out[key] = value
        return out

    def _value(self, type_name: str, wire: int, raw: Any, where: str) -> Any:
        if type_name in _WIRE:
            return _scalar(type_name, wire, raw, where)
        if wire != LEN:
            raise Malformed(f"{where}: wire type {wire} for a {type_name} message")
        return self.message(type_name, raw, where)

    def _special(self, name: str, buf: bytes, where: str) -> Any:
        """The apimachinery types with their own JSON (MarshalJSON) rather than a struct's."""
        if name not in _SPECIAL:
            return _NOT_SPECIAL
        vals = {num: (wire, raw) for num, wire, raw in fields(buf)}

        def get(num: int, type_name: str) -> Any:
            wire, raw = vals.get(num, (_WIRE[type_name], _zero(type_name)))
            return _scalar(type_name, wire, raw, f"{where}#{num}")

        if name in ("meta.Time", "meta.MicroTime"):
            if not buf:  # metav1.Time.Marshal writes nothing for the zero Time
                return None
            return _rfc3339(get(1, "int64"), get(2, "int32"), name == "meta.MicroTime")
        if name == "meta.Duration":
            return _duration(get(1, "int64"))
        if name == "intstr.IntOrString":
            return get(3, "string") if get(1, "int64") == 1 else get(2, "int32")
        if name in ("resource.Quantity", "resource.QuantityValue"):
            return get(1, "string")
        # FieldsV1 / RawExtension: their raw bytes are JSON already
        raw = vals.get(1, (LEN, b""))[1]
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise Malformed(f"{where}: raw bytes that are not JSON") from None


_NOT_SPECIAL = object()
_SPECIAL = {"meta.Time", "meta.MicroTime", "meta.Duration", "intstr.IntOrString",
            "resource.Quantity", "resource.QuantityValue", "meta.FieldsV1",
            "runtime.RawExtension"}


def _zero(type_name: str) -> Any:
    """The raw wire value of a field left out (proto2's default)."""
    return 0 if type_name in _WIRE and _WIRE[type_name] != LEN else b""


def _packed(type_name: str, raw: bytes) -> bytes:
    """A packed repeated scalar as ordinary (field 1) records, so fields() reads it."""
    wire = _WIRE[type_name]
    key = bytes([(1 << 3) | wire])
    out, pos = bytearray(), 0
    while pos < len(raw):
        if wire == VARINT:
            _, end = _varint(raw, pos)
        else:
            end = pos + (8 if wire == I64 else 4)
            if end > len(raw):
                raise Malformed("truncated packed field")
        out += key + raw[pos:end]
        pos = end
    return bytes(out)


def decode(body: bytes) -> tuple[dict[str, Any], list[str]]:
    """(the object as JSON would carry it, warnings) of a protobuf request body; an
    ApiError for a body the lab cannot read."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "the protobuf body does not start with the Kubernetes "
                       "envelope's magic bytes k8s\\x00")
    try:
        envelope = {num: (wire, raw) for num, wire, raw in fields(body[len(MAGIC):])}
        unknown = Decoder().message("runtime.Unknown", body[len(MAGIC):], "")
    except Malformed as exc:
        raise ApiError(400, f"the protobuf body is malformed: {exc}") from None
    api_version, kind = unknown.get("apiVersion", ""), unknown.get("kind", "")
    if unknown.get("contentEncoding"):
        raise ApiError(415, f"the protobuf body's contentEncoding "
                       f"{unknown['contentEncoding']!r} is not read by the lab")
    message = KINDS.get((api_version, kind))
    if message is None:
        served = ", ".join(sorted({f"{k} ({v})" for v, k in KINDS}))
        raise ApiError(415, f"the lab does not decode protobuf bodies of {kind or '?'} "
                       f"({api_version or '?'}); it decodes {served}; send JSON "
                       "(Content-Type application/json)")
    decoder = Decoder()
    raw = envelope.get(2, (LEN, b""))[1]
    try:
        obj = decoder.message(message, raw, "")
    except Malformed as exc:
        raise ApiError(400, f"the protobuf body of {kind} is malformed: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}, decoder.warnings
