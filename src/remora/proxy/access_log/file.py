"""``envoy.access_loggers.file``: one line per connection/request to a path.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/file/v3/file.proto
"""

from __future__ import annotations

from remora.proxy.access_log import substitution_format
from remora.proxy.access_log.format import Formatter, JsonFormat, TextFormat
from remora.proxy.access_log.sink import FLUSH_LINES, Sink, open_sink
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.interfaces import FactoryContext
from remora.proxy.registry import register
from remora.proxy.stream_info import StreamInfo

TYPE_URL = "envoy.extensions.access_loggers.file.v3.FileAccessLog"


class FileAccessLog:
    def __init__(self, sink: Sink, formatter: Formatter) -> None:
        self.sink = sink
        self.formatter = formatter
        # bound once: one line per request is appended to the sink's list of this loop
        # flush (Sink.write inlined), the first line after a flush schedules the next
        self._lines = sink.pending
        self._render = formatter.render

    def log(self, info: StreamInfo) -> None:
        lines = self._lines
        lines.append(self._render(info))
        sink = self.sink
        if not sink.scheduled or sink.loop_closed():
            sink.schedule()
        elif len(lines) >= FLUSH_LINES:
            sink.write_out()  # as Sink.write: a long interval buffers this much at most


@register("access_logger", "envoy.access_loggers.file", TYPE_URL)
def _factory(typed: Fields, _context: FactoryContext | None) -> FileAccessLog:
    path = typed.string("path", required=True)
    legacy_text = typed.string("format")  # deprecated `format` field
    legacy_json = typed.raw("json_format")
    log_format = typed.fields("log_format", "SubstitutionFormatString")
    typed.done()
    formatter: Formatter
    if sum(x is not None for x in (legacy_text, legacy_json, log_format)) > 1:
        raise ConfigError(typed.path, "set only one of format, json_format, log_format")
    if legacy_text is not None:
        formatter = TextFormat(legacy_text, typed.at("format"))
    elif legacy_json is not None:
        formatter = JsonFormat(legacy_json, typed.at("json_format"))
    else:
        formatter = substitution_format(log_format)
    return FileAccessLog(open_sink(path), formatter)
