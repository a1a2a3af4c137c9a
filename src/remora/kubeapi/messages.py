"""Requests, responses and Kubernetes' Status objects (metav1.Status), pure values.

Every error the API returns is a Status with the HTTP code, reason and message the
apiserver uses (k8s.io/apimachinery/pkg/api/errors): kubectl prints its message as
`Error from server (NotFound): ...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 406: "NotAcceptable", 409: "AlreadyExists",
           415: "UnsupportedMediaType", 422: "Invalid", 500: "InternalError"}


PROTOBUF = "application/vnd.kubernetes.protobuf"
PROTOBUF_MAGIC = b"k8s\x00"  # the envelope every Kubernetes protobuf body starts with


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    warnings: list[str] = field(default_factory=list)  # from reading the body

    @classmethod
    def parse(cls, method: str, target: str, headers: dict[str, str],
              body: bytes = b"") -> Request:
        path, _, qs = target.partition("?")
        return cls(method.upper(), path, parse_qs(qs, keep_blank_values=True), headers, body)

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return self.arg(name).lower() in ("true", "1")

    def json(self) -> Any:
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == PROTOBUF or self.body.startswith(PROTOBUF_MAGIC):
            # kubectl's typed clients (create namespace|deployment|service)
            # send built-in kinds as protobuf, with no fallback to JSON (client-go only
            # falls back from CBOR on a 415): decoded into the JSON client-go would have
            # sent, so the JSON path below and after is the one path
            from remora.kubeapi import protobuf  # here: it imports ApiError from this module

            obj, warnings = protobuf.decode(self.body)
            self.warnings += warnings
            return obj
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the request body is not JSON: {exc}") from None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    warnings: list[str] = field(default_factory=list)  # sent as `Warning: 299 - "..."`
    headers: list[tuple[str, str]] = field(default_factory=list)  # any others (ETag ...)

    @classmethod
    def of(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj).encode())

    def json(self) -> Any:
        return json.loads(self.body)


class ApiError(Exception):
    """An error answered as a Status object."""

    def __init__(self, code: int, message: str, reason: str | None = "",
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # None: no reason at all, as ErrorToAPIStatus answers an error that is not a
        # StatusError (StatusReasonUnknown, ""); kubectl then prints "Error from server:"
        self.reason = "" if reason is None else reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        out = status_object(self.code, self.message, self.reason, self.details)
        if not self.reason:
            del out["reason"]  # metav1.Status's reason is omitempty
        return out

    def response(self) -> Response:
        return Response.of(self.status(), self.code)


def status_object(code: int, message: str, reason: str = "",
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Success" if code < 400 else "Failure",
                           "message": message, "reason": reason or REASONS.get(code, ""),
                           "code": code}
    if details is not None:
        out["details"] = details
    return out


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    what = f"{resource}.{group}" if group else resource
    return ApiError(404, f'{what} "{name}" not found',
                    details={"name": name, "group": group, "kind": resource})
