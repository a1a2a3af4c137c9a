"""``envoy.access_loggers.stdout`` and ``envoy.access_loggers.stderr``.
https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/stream/v3/stream.proto
"""

from __future__ import annotations

from remora.proxy.access_log import substitution_format
from remora.proxy.access_log.file import FileAccessLog
from remora.proxy.access_log.sink import fd_sink
from remora.proxy.config.strict import Fields
from remora.proxy.interfaces import FactoryContext
from remora.proxy.registry import register


@register("access_logger", "envoy.access_loggers.stdout",
          "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog")
def _stdout(typed: Fields, _context: FactoryContext | None) -> FileAccessLog:
    log_format = typed.fields("log_format", "SubstitutionFormatString")
    typed.done()
    return FileAccessLog(fd_sink(1, "stdout"), substitution_format(log_format))


@register("access_logger", "envoy.access_loggers.stderr",
          "envoy.extensions.access_loggers.stream.v3.StderrAccessLog")
def _stderr(typed: Fields, _context: FactoryContext | None) -> FileAccessLog:
    log_format = typed.fields("log_format", "SubstitutionFormatString")
    typed.done()
    return FileAccessLog(fd_sink(2, "stderr"), substitution_format(log_format))
