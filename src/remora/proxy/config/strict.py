"""Strict reading of Envoy v3 JSON/YAML: every field is either understood or rejected.

Envoy's rule for remora (docs/architecture.md): a field the proxy does not implement is
an error at load time that names the field's path, never silently ignored. Every message
reader takes its fields through ``Fields`` and calls ``done()``; whatever is left is an
unknown field.

Keys may be written in proto field names (``use_original_dst``) or in proto3 JSON's
lowerCamelCase (``useOriginalDst``, as ``istioctl proxy-config -o json`` prints them);
Envoy accepts both, so does this reader. Map-valued fields (metadata, headers) keep their
keys as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from remora.errors import RemoraError


class ConfigError(RemoraError):
    """Invalid or unsupported configuration at a field path such as
    ``static_resources.listeners[0].filter_chains[1].filters[0].typed_config.cluster``."""

    def __init__(self, path: str, message: str, fix: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, fix)
        self.path = path
        self.message = message


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)s$")


# google.protobuf.Duration's largest seconds (10000 years), as Envoy's validateDurations
_DURATION_MAX = 315_576_000_000


def parse_duration(value: Any, path: str) -> float:
    """A google.protobuf.Duration as JSON ("10s", "0.250s") or {seconds, nanos}: seconds.
    A negative one is refused, as Envoy's MessageUtil::validateDurations refuses it in any
    message of the config ("Invalid duration: Expected positive duration")."""
    seconds: float | None = None
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            seconds = float(match.group(1))
    elif isinstance(value, dict) and set(value) <= {"seconds", "nanos"}:
        secs, nanos = float(value.get("seconds", 0)), float(value.get("nanos", 0))
        # a negative part is a negative duration to Envoy, whatever the sum
        seconds = -1.0 if secs < 0 or nanos < 0 else secs + nanos / 1e9
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    if seconds is not None:
        if seconds < 0:
            raise ConfigError(path, f"negative duration {value!r} (Envoy refuses it: "
                                    "\"Expected positive duration\")",
                              "use 0s or more (0s disables a timeout)")
        if seconds > _DURATION_MAX:
            raise ConfigError(path, f"duration {value!r} out of range (Envoy refuses more "
                                    f"than {_DURATION_MAX}s)")
        return seconds
    raise ConfigError(path, f"invalid duration {value!r} (expected a string such as \"10s\")")


def json_kind(value: Any) -> str:
    """What a JSON/YAML value is, in the file's words (not Python's ``list``/``NoneType``)."""
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        n = len(value)
        return f"a list of {n} item{'s' if n != 1 else ''}" if n else "an empty list"
    return type(value).__name__


def not_an_object(value: Any, what: str) -> str:
    """The fix for a message written as something else: a list of one object is the
    object with a list around it (a leading ``- `` in YAML, ``[ ]`` in JSON)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return (f"write {what} as the object itself: drop the list around it (the leading "
                "\"- \" in YAML, the [ ] in JSON)")
    return f"write {what} as an object of its fields ({{\"field\": value, ...}})"


def any_type(obj: dict[str, Any]) -> str:
    """The message type a google.protobuf.Any names in its "@type", without the URL
    prefix; "" when it has none."""
    url = obj.get("@type")
    return url.rsplit("/", 1)[-1] if isinstance(url, str) else ""


class Fields:
    """Reads one message's fields by name; ``done()`` rejects whatever was not read.

    ``message`` names the message in errors. A google.protobuf.Any (a typed_config) is
    named by the type its "@type" gives, as Envoy's own error names it ("invalid JSON in
    envoy.config.bootstrap.v3.Bootstrap @ ...typed_config.<any>: message
    envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy ... no such field: 'x'")."""

    def __init__(self, obj: Any, path: str, message: str = "") -> None:
        if not isinstance(obj, dict):
            what = message or path.rsplit(".", 1)[-1] or "it"
            # a typed_config is a google.protobuf.Any, as Envoy's error calls it
            label = "google.protobuf.Any" if message == "typed_config" else message
            raise ConfigError(path, f"expected an object{f' ({label})' if label else ''}, "
                                    f"got {json_kind(obj)}", not_an_object(obj, what))
        self.obj: dict[str, Any] = obj
        self.path = path
        # an Any read as "typed_config" (or unnamed) is named by its "@type"
        self.message = (any_type(obj) or message) if message in ("", "typed_config") \
            else message
        self._seen: set[str] = set()

    # -- lookup ----------------------------------------------------------------------
    def _key(self, name: str) -> str | None:
        for key in (name, camel(name)):
            if key in self.obj:
                self._seen.add(key)
                return key
        return None

    def has(self, name: str) -> bool:
        return any(k in self.obj for k in (name, camel(name)))

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str, default: Any = None, required: bool = False) -> Any:
        key = self._key(name)
        if key is None:
            if required:
                raise ConfigError(self.at(name), "required field is missing")
            return default
        return self.obj[key]

    # -- typed getters ---------------------------------------------------------------
    def string(self, name: str, default: str | None = None, required: bool = False) -> Any:
        value = self.raw(name, default, required)
        if value is not None and not isinstance(value, str):
            raise ConfigError(self.at(name), f"expected a string, got {value!r}")
        return value

    def integer(self, name: str, default: int | None = None, required: bool = False) -> Any:
        value = self.raw(name, default, required)
        if value is None:
            return None
        if isinstance(value, dict) and set(value) == {"value"}:  # wrapper type written as message
            value = value["value"]
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value):  # 64-bit ints are strings
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.at(name), f"expected an integer, got {value!r}")
        return value

    def boolean(self, name: str, default: bool | None = None, required: bool = False) -> Any:
        value = self.raw(name, default, required)
        if isinstance(value, dict) and set(value) == {"value"}:
            value = value["value"]
        if value is not None and not isinstance(value, bool):
            raise ConfigError(self.at(name), f"expected true or false, got {value!r}")
        return value

    def duration(self, name: str, default: float | None = None) -> Any:
        value = self.raw(name)
        if value is None:
            return default
        return parse_duration(value, self.at(name))

    def enum(self, name: str, allowed: tuple[str, ...], default: str | None = None) -> Any:
        value = self.raw(name)
        if value is None:
            return default
        if value not in allowed:
            raise ConfigError(self.at(name), f"unsupported value {value!r} "
                                             f"(remora supports {', '.join(allowed)})")
        return value

    def items(self, name: str) -> list[Any]:
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.at(name), f"expected a list, got {type(value).__name__}")
        return value

    def fields(self, name: str, message: str = "") -> Fields | None:
        value = self.raw(name)
        if value is None:
            return None
        return Fields(value, self.at(name), message)

    def each(self, name: str, message: str = "") -> Iterator[Fields]:
        for i, item in enumerate(self.items(name)):
            yield Fields(item, f"{self.at(name)}[{i}]", message)

    def ignore(self, *names: str) -> None:
        """Accept fields that have no effect on what remora does (documented per call)."""
        for name in names:
            self._key(name)

    # -- the point of it all ---------------------------------------------------------
    def done(self) -> None:
        unknown = [k for k in self.obj if k not in self._seen]
        if unknown:
            name = unknown[0]
            # the Any's type when "@type" gave one (a typed_config's message), else the
            # message's name
            what = f" in {self.message}" if self.message else ""
            raise ConfigError(
                self.at(snake(name) if not name.startswith("@") else name),
                f"unknown or unsupported field {name!r}{what}",
                "remove it, or run this config on a real Envoy (remora proxy implements a "
                "documented subset of Envoy v3 and never ignores a field)",
            )


def type_url_of(typed: Fields) -> str:
    """The message type of an ``Any`` (``typed_config``) without its URL prefix."""
    url = typed.string("@type", required=True)
    return str(url).rsplit("/", 1)[-1]
