"""Access loggers (``envoy.access_loggers.*``) and the formatter they share.

``build(configs, path)`` turns an ``access_log`` list (listener, tcp_proxy or HCM) into
loggers; it is what ``FactoryContext.access_loggers`` does.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/accesslog/v3/accesslog.proto
"""

from __future__ import annotations

from collections.abc import Sequence

from remora.proxy import registry
from remora.proxy.access_log.format import (
    DEFAULT_FORMAT,
    Formatter,
    JsonFormat,
    TextFormat,
)
from remora.proxy.config.strict import ConfigError, Fields, type_url_of
from remora.proxy.interfaces import AccessLogger, FactoryContext, JsonValue
from remora.proxy.stream_info import RESPONSE_FLAG_ORDER, StreamInfo


def substitution_format(fields: Fields | None) -> Formatter:
    """A ``SubstitutionFormatString`` (log_format); None -> Envoy's default text format."""
    if fields is None:
        return TextFormat(DEFAULT_FORMAT, "")
    omit = bool(fields.boolean("omit_empty_values", False))
    text = fields.string("text_format")
    source = fields.fields("text_format_source", "DataSource")
    json_format = fields.raw("json_format")
    fields.done()
    if source is not None:
        text = source.string("inline_string")
        source.done()
        if text is None:
            raise ConfigError(source.path, "only inline_string is supported",
                              "inline the format string")
    if json_format is not None:
        if not isinstance(json_format, dict):
            raise ConfigError(fields.at("json_format"), "expected an object")
        return JsonFormat(json_format, fields.at("json_format"), omit)
    if text is None:
        raise ConfigError(fields.path, "log_format needs text_format_source or json_format")
    return TextFormat(text, fields.at("text_format_source.inline_string"), omit)


class FilteredLogger:
    """An ``AccessLog.filter``; remora implements ``response_flag_filter``.
    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/accesslog/v3/accesslog.proto#config-accesslog-v3-responseflagfilter
    """

    def __init__(self, inner: AccessLogger, flags: frozenset[str]) -> None:
        self.inner = inner
        self.flags = flags

    def log(self, info: StreamInfo) -> None:
        if (info.response_flags.keys() & self.flags) if self.flags else info.response_flags:
            self.inner.log(info)


def build(configs: Sequence[JsonValue], path: str,
          context: FactoryContext | None = None) -> list[AccessLogger]:
    loggers: list[AccessLogger] = []
    for i, raw in enumerate(configs):
        entry = Fields(raw, f"{path}[{i}]", "AccessLog")
        name = entry.string("name")
        typed = entry.fields("typed_config", "typed_config")
        filt = entry.fields("filter", "AccessLogFilter")
        entry.done()
        if typed is None:
            raise ConfigError(entry.at("typed_config"), "required field is missing")
        ext = registry.lookup("access_logger", name, type_url_of(typed), typed.path)
        logger: AccessLogger = ext.factory(typed, context)
        if filt is not None:
            rff = filt.fields("response_flag_filter", "ResponseFlagFilter")
            filt.done()
            if rff is None:
                raise ConfigError(filt.path, "remora supports only response_flag_filter")
            flags = rff.raw("flags", [])
            rff.done()
            bad = [f for f in flags if f not in RESPONSE_FLAG_ORDER]
            if bad:
                raise ConfigError(rff.at("flags"), f"unknown response flag {bad[0]!r}")
            logger = FilteredLogger(logger, frozenset(flags))
        loggers.append(logger)
    return loggers
