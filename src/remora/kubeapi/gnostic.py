"""An OpenAPI v2 document as gnostic's protobuf `openapi.v2.Document` (pure).

client-go reads /openapi/v2 only in this form (discovery's OpenAPISchema asks for
`application/com.github.proto-openapi.spec.v2@v1.0+protobuf` and proto.Unmarshals the
answer), so that is how kubectl's v2 users get it: `kubectl explain --output
plaintext-openapiv2`, client-side validation of a kind whose v3 PATCH takes no
fieldValidation, apply's patch of a kind without a v3 schema. The messages and field
numbers are github.com/google/gnostic-models openapiv2/OpenAPIv2.proto's; only what a
Kubernetes document holds is written (schemas: $ref, format, description, required,
additionalProperties, type, items, allOf, properties, enum, default, vendor extensions;
operations: operationId, consumes, query parameters, responses, vendor extensions). A
vendor extension's value is carried as YAML text (gnostic's Any.yaml), which JSON is.
"""

from __future__ import annotations

import json
from typing import Any


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len(field: int, data: bytes) -> bytes:
    """A length-delimited field (a string or a message; an empty message is still sent,
    as its presence is what it says)."""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _str(field: int, value: str | None) -> bytes:
    return _len(field, value.encode()) if value else b""  # proto3 leaves "" out


def _bool(field: int, value: bool) -> bytes:
    return _varint(field << 3) + b"\x01" if value else b""


def _any(value: Any) -> bytes:
    return _str(2, json.dumps(value))  # Any{yaml = 2}


def _extensions(field: int, node: dict[str, Any]) -> bytes:
    return b"".join(_len(field, _str(1, k) + _len(2, _any(v)))  # NamedAny{name, value}
                    for k, v in node.items() if k.startswith("x-"))


SCHEMA_KEYS = {"$ref", "format", "description", "required", "additionalProperties", "type",
               "items", "allOf", "properties", "enum", "default"}


def schema(node: dict[str, Any]) -> bytes:
    unknown = {k for k in node if not k.startswith("x-")} - SCHEMA_KEYS
    if unknown:
        raise ValueError(f"no gnostic encoding for schema keys {sorted(unknown)}")
    out = _str(1, node.get("$ref")) + _str(2, node.get("format"))
    out += _str(4, node.get("description"))
    if "default" in node:
        out += _len(5, _any(node["default"]))
    out += b"".join(_str(19, r) for r in node.get("required", []))
    out += b"".join(_len(20, _any(e)) for e in node.get("enum", []))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):  # AdditionalPropertiesItem{schema = 1 | boolean = 2}
        out += _len(21, _len(1, schema(extra)))
    elif isinstance(extra, bool):
        out += _len(21, _bool(2, extra))
    if "type" in node:  # TypeItem{repeated value = 1}
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        out += _len(22, b"".join(_str(1, t) for t in types))
    if "items" in node:  # ItemsItem{repeated schema = 1}
        items = node["items"] if isinstance(node["items"], list) else [node["items"]]
        out += _len(23, b"".join(_len(1, schema(i)) for i in items))
    out += b"".join(_len(24, schema(s)) for s in node.get("allOf", []))
    if "properties" in node:  # Properties{repeated NamedSchema additional_properties = 1}
        out += _len(25, b"".join(_len(1, _str(1, k) + _len(2, schema(v)))
                                 for k, v in node["properties"].items()))
    return out + _extensions(31, node)


def _parameter(p: dict[str, Any]) -> bytes:
    # ParametersItem{parameter = 1} > Parameter{non_body_parameter = 2} >
    # NonBodyParameter{query_parameter_sub_schema = 3}
    query = (_bool(1, bool(p.get("required"))) + _str(2, p["in"]) + _str(4, p["name"])
             + _str(6, p.get("type")) + _bool(20, bool(p.get("uniqueItems"))))
    return _len(1, _len(2, _len(3, query)))


def _operation(op: dict[str, Any]) -> bytes:
    out = _str(5, op.get("operationId"))
    out += b"".join(_str(7, c) for c in op.get("consumes", []))
    out += b"".join(_len(8, _parameter(p)) for p in op.get("parameters", []))
    codes = b"".join(  # Responses{response_code = 1: NamedResponseValue{name, value}}
        _len(1, _str(1, code) + _len(2, _len(1, _str(1, r.get("description")))))
        for code, r in op.get("responses", {}).items())
    out += _len(9, codes)
    return out + _extensions(13, op)


METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "patch": 8}


def document(doc: dict[str, Any]) -> bytes:
    """DOC (a swagger 2.0 document as JSON) as an openapi.v2.Document message."""
    info = doc.get("info", {})
    out = _str(1, doc.get("swagger"))
    out += _len(2, _str(1, info.get("title")) + _str(2, info.get("version")))
    paths = b"".join(  # Paths{path = 2: NamedPathItem{name, value: PathItem}}
        _len(2, _str(1, path) + _len(2, b"".join(
            _len(METHODS[m], _operation(op)) for m, op in item.items())))
        for path, item in doc.get("paths", {}).items())
    out += _len(8, paths)
    out += _len(9, b"".join(_len(1, _str(1, name) + _len(2, schema(s)))
                            for name, s in doc.get("definitions", {}).items()))
    return out
