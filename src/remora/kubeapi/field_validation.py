"""Server-side field validation: the request's `fieldValidation` and the unknown fields of
an object against Kubernetes' own schema (pure).

The apiserver decodes a written object strictly (sigs.k8s.io/json) and, by the request's
`fieldValidation` (metav1.FieldValidation*, apiserver/pkg/endpoints/handlers): `Strict`
refuses an object with a field its Go type does not have, `Warn` (the default) answers a
`Warning: unknown field "spec.x"` per field, `Ignore` says nothing. kubectl 1.32 sends
`Strict` by default (`--validate=strict`) once the OpenAPI v3 document says the PATCH takes
the parameter, so a typo in a manifest is refused as on a real cluster:

    Deployment in version "v1" cannot be handled as a Deployment: strict decoding error:
    unknown field "spec.template.spec.containers[0].imagePullPolicyy"

(400 BadRequest, create and update), and for a strategic-merge or merge patch (what
`kubectl apply` sends for an existing object), patch.go's 422 Invalid on the field
`patch` whose value is the patch as Go's `%+v` prints it.

The lab reads the schema from the served OpenAPI definitions (openapi.definitions()):
a field is unknown when its object schema has `properties` without it. Maps
(`additionalProperties`) are walked value by value, lists item by item; a schema without
either (RawExtension, FieldsV1, IntOrString) takes anything, as its Go type does. Kinds
without a schema (the Istio CRDs) take anything too, as a CRD without a structural schema.
The lab's own "(ignored)" warnings for fields Kubernetes knows but the lab does not model
are a separate matter (resources/reader.py) and still come back as warnings.
"""

from __future__ import annotations

import decimal
import functools
import json
import math
from typing import Any

from remora.kubeapi import openapi
from remora.kubeapi.messages import ApiError

STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
DIRECTIVES = (IGNORE, STRICT, WARN)


def directive(value: str) -> str:
    """The request's fieldValidation; the apiserver's default is Warn."""
    if not value:
        return WARN
    if value not in DIRECTIVES:
        raise ApiError(400, f'fieldValidation: Unsupported value: "{value}": supported '
                       'values: "Ignore", "Strict", "Warn"')
    return value


@functools.cache
def _definition_names() -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for name, schema in openapi.definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            out[(gvk["group"], gvk["version"], gvk["kind"])] = name
    return out


def unknown_fields(group: str, version: str, kind: str, obj: dict[str, Any]) -> list[str]:
    """The paths of OBJ's fields GROUP/VERSION KIND's schema does not have, in the
    object's order, written as the strict decoder writes them (`a.b[0].c`)."""
    name = _definition_names().get((group, version, kind))
    if name is None:
        return []
    found: list[str] = []
    _walk(openapi.definitions(), {"$ref": openapi.V2_PREFIX + name}, obj, "", found)
    return found


def _walk(defs: dict[str, Any], schema: dict[str, Any], value: Any, path: str,
          found: list[str]) -> None:
    while "$ref" in schema:
        schema = defs[str(schema["$ref"])[len(openapi.V2_PREFIX):]]
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            where = f"{path}.{key}" if path else str(key)
            if props is not None:
                if key in props:
                    _walk(defs, props[key], sub, where, found)
                else:
                    found.append(where)
            elif isinstance(extra, dict):
                _walk(defs, extra, sub, f"{path}[{key}]", found)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(defs, schema["items"], item, f"{path}[{i}]", found)


def strict_message(paths: list[str]) -> str:
    """runtime.NewStrictDecodingError's text."""
    return "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in paths)


def warnings(paths: list[str]) -> list[str]:
    """The Warn directive's warnings, one per field (addStrictDecodingWarnings)."""
    return [f'unknown field "{p}"' for p in paths]


def decode_error(kind: str, version: str, paths: list[str]) -> ApiError:
    """Create/update under Strict: the codec's error, a 400 BadRequest."""
    return ApiError(400, f'{kind} in version "{version}" cannot be handled as a {kind}: '
                    f"{strict_message(paths)}")


def patch_error(patch: Any, paths: list[str]) -> ApiError:
    """A patch under Strict: patch.go's NewInvalid(GroupKind{}, "", [Invalid(patch,
    %+v of the patch, the strict error)]). The patched object is checked by the
    unstructured converter (FromUnstructuredWithValidation), which sorts the paths."""
    value = go_value(patch)
    quoted = json.dumps(value, ensure_ascii=False)  # field.Invalid's %q of a string
    cause = f"Invalid value: {quoted}: {strict_message(sorted(paths))}"
    return ApiError(422, f' "" is invalid: patch: {cause}', details={"causes": [
        {"reason": "FieldValueInvalid", "message": cause, "field": "patch"}]})


def go_value(value: Any) -> str:
    """VALUE (decoded JSON) as Go's fmt `%+v` prints the map[string]interface{} the
    apiserver decoded it to: maps with sorted keys, `[a b]` lists, `<nil>`; integers are
    int64 (k8s.io/apimachinery/pkg/util/json keeps them whole), other numbers float64."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _go_float(x: float) -> str:
    """%v of a float64 (fmt's %g with the shortest digits, strconv.FormatFloat): %e form
    when the decimal exponent is below -4 or at least 6 (`1e+06`, `1.5e-05`), else plain."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    if x == 0:
        return "0"
    sign, digits, exp = decimal.Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    e = len(text) + exp - 1
    out = "-" if sign else ""
    if e < -4 or e >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{out}{mantissa}e{'+' if e >= 0 else '-'}{abs(e):02d}"
    return out + format(decimal.Decimal(repr(abs(x))).normalize(), "f")
