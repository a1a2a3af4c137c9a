"""Counters, gauges and histograms named as Envoy names them, and their text renderings.

Names are Envoy's full stat names (``cluster.inbound|18080||.upstream_cx_total``,
``listener.0.0.0.0_15006.downstream_cx_total``, ``tcp.<stat_prefix>.downstream_cx_total``);
``/stats`` prints them as ``name: value`` and ``/stats/prometheus`` with Envoy's tag
extraction (``envoy_cluster_upstream_cx_total{envoy_cluster_name="..."}``).
https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final

from remora.native import mypyc_attr
from remora.proxy.interfaces import Stats

# Envoy's default histogram bucket bounds (source/common/stats/histogram_impl.h).
BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)


class Histogram:
    """Envoy's default buckets, a count and a sum. A value is only appended when observed
    and sorted into its bucket when the histogram is read (``counts``, ``count``,
    ``total``) or FOLD_AT values are waiting, as Envoy's histograms record into a
    thread-local buffer that is merged into the buckets at the stats flush: what every
    view prints is the same as bucketing each value at once (the sum is added in the
    order the values came)."""

    __slots__ = ("_count", "_counts", "_total", "pending")
    # values waiting at most (a histogram nobody reads stays small). An owner on a hot
    # path may do what ``observe`` does itself when ``histogram`` gave it this class
    # exactly (append to ``pending``, fold at FOLD_AT), as the router and the connection
    # manager do per request (Final: a class constant for mypyc too, which makes an
    # unannotated class-level value an instance attribute's default)
    FOLD_AT: Final = 512

    def __init__(self) -> None:
        self._counts = [0] * (len(BUCKETS) + 1)
        self._count = 0
        self._total = 0.0
        self.pending: list[float] = []  # observed, not yet in the buckets

    def observe(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Sort the waiting values into the buckets: value v counts in bucket
        ``bisect_left(BUCKETS, v)`` (the first bound >= v, the last one past them all)."""
        values = self.pending
        if not values:
            return
        self.pending = []
        total = self._total
        for value in values:  # one at a time, in order: the same float sum as before
            total += value
        self._total = total
        self._count += len(values)
        values.sort()
        counts = self._counts
        below = 0  # values <= the previous bound
        for i, bound in enumerate(BUCKETS):
            upto = bisect.bisect_right(values, bound)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(values) - below

    @property
    def counts(self) -> list[int]:
        self.fold()
        return self._counts

    @property
    def count(self) -> int:
        self.fold()
        return self._count

    @property
    def total(self) -> float:
        self.fold()
        return self._total

    def merge(self, counts: list[int], count: int, total: float) -> None:
        self.fold()
        for i, c in enumerate(counts[: len(self._counts)]):
            self._counts[i] += c
        self._count += count
        self._total += total

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        target = q * self._count
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= target and c:
                return BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
        return BUCKETS[-1]


# Python classes when compiled by mypyc (remora/native.py): compiled, ``handle.pending += n``
# on a Counter writes the native field and never reaches _StatsCounter's ``pending`` property
@mypyc_attr(native_class=False)
class Counter:
    """A handle on one counter, resolved once from its name (``StatsStore.counter``): an
    increment is an attribute add on the handle, no name built and no dict touched per
    event. The store folds what a handle counted into its totals whenever they are read.
    An owner on a hot path may add to ``pending`` itself (``handle.pending += n``: no
    call), on any handle ``counter`` gives."""

    __slots__ = ("also", "name", "pending")

    def __init__(self, name: str, also: tuple[str, ...] = ()) -> None:
        self.name = name
        # more names the same count is folded into, at no cost per event: a connection
        # manager's listener-scoped copies (listener.<address>.http.<prefix>.*) are the
        # same increments as its http.<prefix>.* ones
        self.also = also
        self.pending = 0  # counted since the store last folded this handle

    def inc(self, value: int = 1) -> None:
        self.pending += value


def _no_pending(handle: _StatsCounter) -> int:
    return 0  # nothing is held here: every increment went to the stats already


def _pending_to_inc(handle: _StatsCounter, value: int) -> None:
    if value:
        handle.inc(value)


@mypyc_attr(native_class=False)
class _StatsCounter(Counter):
    """A handle over any ``interfaces.Stats`` (one that hands out no handles of its own):
    each increment goes to ``stats.inc``, also one made as ``handle.pending += n`` (what a
    hot path does on any handle, one attribute add instead of a call)."""

    __slots__ = ("stats",)

    def __init__(self, stats: Stats, name: str, also: tuple[str, ...] = ()) -> None:
        self.stats = stats
        super().__init__(name, also)

    # (property() over module functions, not the decorators: mypyc compiles no property
    # setter in a Python class, nor a class body naming its own methods)
    pending = property(_no_pending, _pending_to_inc)

    def inc(self, value: int = 1) -> None:
        self.stats.inc(self.name, value)
        for name in self.also:
            self.stats.inc(name, value)


class _StatsHistogram(Histogram):
    """A histogram handle over any ``interfaces.Stats``: each value goes to
    ``stats.observe``."""

    __slots__ = ("name", "stats")

    def __init__(self, stats: Stats, name: str) -> None:
        super().__init__()
        self.stats = stats
        self.name = name

    def observe(self, value: float) -> None:
        self.stats.observe(self.name, value)


class Gauge:
    """A handle on one gauge: ``add`` changes the store's entry in place (gauges stay plain
    dict entries, which the core's circuit breakers also write directly)."""

    __slots__ = ("name", "values")

    def __init__(self, values: dict[str, int], name: str) -> None:
        self.values = values
        self.name = name

    def add(self, delta: int) -> None:
        self.values[self.name] += delta


class _StatsGauge(Gauge):
    """A gauge handle over any ``interfaces.Stats``: each change goes to ``gauge_add``."""

    __slots__ = ("stats",)

    def __init__(self, stats: Stats, name: str) -> None:
        super().__init__({}, name)
        self.stats = stats

    def add(self, delta: int) -> None:
        self.stats.gauge_add(self.name, delta)


def gauge(stats: Stats, name: str) -> Gauge:
    """The handle of gauge NAME in STATS (listed from its first change)."""
    if isinstance(stats, StatsStore):
        return Gauge(stats.gauge_values, name)
    return _StatsGauge(stats, name)


def counter(stats: Stats, name: str, *, declared: bool = False,
            also: tuple[str, ...] = ()) -> Counter:
    """The handle of counter NAME in STATS; DECLARED lists it at 0 at once (as Envoy
    lists every counter a component declares), otherwise from its first increment.
    ALSO: more names that count the same increments (a handle of their own, not shared
    with another caller's handle of NAME alone)."""
    if isinstance(stats, StatsStore):
        return stats.counter(name, declared=declared, also=also)
    if declared:
        for each in (name, *also):
            stats.inc(each, 0)
    return _StatsCounter(stats, name, also)


def declare(stats: Stats, *names: str) -> None:
    """List the counters NAMES at 0 (Envoy lists every counter a component declares, also
    those only a feature remora refuses at config load would count): a name, not a
    handle, so nothing is kept or folded for them."""
    for name in names:
        stats.inc(name, 0)


def histogram(stats: Stats, name: str, *, declared: bool = False) -> Histogram:
    """The handle of histogram NAME in STATS, listed from its first value, or at once
    with DECLARED (Envoy lists a declared histogram as "No recorded values")."""
    if isinstance(stats, StatsStore):
        return stats.histogram(name, declared=declared)
    return _StatsHistogram(stats, name)


class StatsStore:
    """The ``interfaces.Stats`` implementation. Plain dicts: an increment by name is one
    dict op; hot paths resolve a name once to a handle (``counter``, ``histogram``).
    Gauges stay plain dict entries (the core's circuit breakers write them directly);
    a gauge that would change on every request is kept by its owner in a plain int and
    written here by a gauge source only when the gauges are read (``gauge_source``)."""

    def __init__(self) -> None:
        self._counters: defaultdict[str, int] = defaultdict(int)
        # the gauges as written; ``gauges`` (on read) adds what the gauge sources hold
        self.gauge_values: defaultdict[str, int] = defaultdict(int)
        self._histograms: dict[str, Histogram] = {}
        self._counter_handles: dict[str, Counter] = {}
        self._unlisted: dict[str, Histogram] = {}  # histogram handles with no value yet
        self._gauge_sources: dict[str, Callable[[dict[str, int]], None]] = {}

    @property
    def gauges(self) -> defaultdict[str, int]:
        """Every gauge's value (what the gauge sources hold written in first)."""
        values = self.gauge_values
        for source in self._gauge_sources.values():
            source(values)
        return values

    def gauge_source(self, key: str, source: Callable[[dict[str, int]], None]) -> None:
        """SOURCE writes its gauges into the dict it is given whenever the gauges are read.
        One source per KEY: a component that replaces another (a cluster updated by CDS)
        registers under the same key and takes over its gauges."""
        self._gauge_sources[key] = source

    @property
    def counters(self) -> defaultdict[str, int]:
        """Every counter's total (what the handles counted folded in first)."""
        totals = self._counters
        for handle in self._counter_handles.values():
            if handle.pending:
                totals[handle.name] += handle.pending
                for name in handle.also:
                    totals[name] += handle.pending
                handle.pending = 0
        return totals

    @property
    def histograms(self) -> dict[str, Histogram]:
        """Every histogram that has a value (a handle's from its first one)."""
        unlisted = self._unlisted
        if unlisted:
            for name in [n for n, h in unlisted.items() if h.count]:
                self._histograms[name] = unlisted.pop(name)
        return self._histograms

    def counter(self, name: str, *, declared: bool = False,
                also: tuple[str, ...] = ()) -> Counter:
        key = "\0".join((name, *also))
        handle = self._counter_handles.get(key)
        if handle is None:
            handle = self._counter_handles[key] = Counter(name, also)
        if declared:
            for each in (name, *also):
                self._counters[each] += 0
        return handle

    def histogram(self, name: str, *, declared: bool = False) -> Histogram:
        hist = self._histograms.get(name) or self._unlisted.get(name)
        if hist is None:
            hist = self._unlisted[name] = Histogram()
        if declared and name in self._unlisted:
            self._histograms[name] = self._unlisted.pop(name)
        return hist

    def inc(self, name: str, value: int = 1) -> None:
        self._counters[name] += value

    def gauge_add(self, name: str, delta: int) -> None:
        self.gauge_values[name] += delta

    def gauge_set(self, name: str, value: int) -> None:
        self.gauge_values[name] = value

    def observe(self, name: str, value_ms: float) -> None:
        hist = self._histograms.get(name)
        if hist is None:
            # a handle of this name, not yet listed, is the same histogram
            hist = self._unlisted.pop(name) if name in self._unlisted else Histogram()
            self._histograms[name] = hist
        hist.observe(value_ms)

    def touch(self, *counters: str) -> None:
        """Make counters exist at 0 so /stats lists them before the first event (as Envoy
        does for every stat a component declares)."""
        for name in counters:
            self._counters[name] += 0

    # -- cross-process merge (--concurrency workers send snapshots to the main process) --
    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "gauges": dict(self.gauges),
            "histograms": {k: [h.counts, h.count, h.total] for k, h in self.histograms.items()},
        }

    def merged(self, others: list[dict[str, Any]]) -> StatsStore:
        out = StatsStore()
        for snap in [self.snapshot(), *others]:
            for k, v in snap["counters"].items():
                out.counters[k] += v
            for k, v in snap["gauges"].items():
                out.gauges[k] += v
            for k, (counts, count, total) in snap["histograms"].items():
                out.histograms.setdefault(k, Histogram()).merge(counts, count, total)
        return out

    # -- renderings ------------------------------------------------------------------
    def render_text(self, filter_re: str | None = None, used_only: bool = False) -> str:
        pat = re.compile(filter_re) if filter_re else None
        lines = []
        values: dict[str, int] = {**self.counters, **self.gauges}
        for name in sorted(values):
            if (pat and not pat.search(name)) or (used_only and not values[name]):
                continue
            lines.append(f"{name}: {values[name]}")
        for name in sorted(self.histograms):
            if pat and not pat.search(name):
                continue
            hist = self.histograms[name]
            qs = [(q, hist.quantile(q / 100)) for q in (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)]
            body = " ".join(f"P{q:g}({v:g},{v:g})" for q, v in qs if v is not None) \
                if hist.count else "No recorded values"
            lines.append(f"{name}: {body}")
        return "\n".join(lines) + ("\n" if lines else "")

    def render_prometheus(self) -> str:
        out: list[str] = []
        for kind, values in (("counter", self.counters), ("gauge", self.gauges)):
            grouped: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for name, value in values.items():
                metric, labels = prometheus_name(name)
                grouped[metric].append((labels, value))
            for metric in sorted(grouped):
                out.append(f"# TYPE {metric} {kind}")
                out.extend(f"{metric}{labels} {value}" for labels, value in sorted(grouped[metric]))
        hgroups: dict[str, list[tuple[str, Histogram]]] = defaultdict(list)
        for name, hist in self.histograms.items():
            metric, labels = prometheus_name(name)
            hgroups[metric].append((labels, hist))
        for metric in sorted(hgroups):
            out.append(f"# TYPE {metric} histogram")
            for labels, hist in sorted(hgroups[metric], key=lambda x: x[0]):
                inner = labels[1:-1]
                sep = "," if inner else ""
                cum = 0
                for bound, c in zip(BUCKETS, hist.counts, strict=False):
                    cum += c
                    out.append(f'{metric}_bucket{{{inner}{sep}le="{bound:g}"}} {cum}')
                out.append(f'{metric}_bucket{{{inner}{sep}le="+Inf"}} {hist.count}')
                out.append(f"{metric}_sum{labels} {hist.total:g}")
                out.append(f"{metric}_count{labels} {hist.count}")
        return "\n".join(out) + "\n"


# Envoy's default tag extractors for the stat families remora emits
# (source/common/config/well_known_names.cc): the tag value is cut out of the name.
_TAGS: tuple[tuple[str, str], ...] = (
    ("cluster.", "envoy_cluster_name"),
    ("listener.", "envoy_listener_address"),
    ("tcp.", "envoy_tcp_prefix"),
    ("http.", "envoy_http_conn_manager_prefix"),
)


def prometheus_name(name: str) -> tuple[str, str]:
    """``cluster.inbound|18080||.upstream_cx_total`` ->
    (``envoy_cluster_upstream_cx_total``, ``{envoy_cluster_name="inbound|18080||"}``)."""
    for prefix, tag in _TAGS:
        if name.startswith(prefix) and name.count(".") >= 2:
            rest = name[len(prefix):]
            # the tag value may itself contain dots (listener 0.0.0.0_15006): the stat's
            # own name is the last segment(s) that Envoy defines; we take the last one.
            value, _, stat = rest.rpartition(".")
            listener, _, worker = value.rpartition(".worker_")
            if prefix == "listener." and listener and worker.isdigit():
                # per-worker listener stats: Envoy's envoy.worker_id tag, its label first
                return (f"envoy_listener_worker_{_sanitize(stat)}",
                        f'{{envoy_worker_id="{worker}",{tag}="{listener}"}}')
            metric = "envoy_" + _sanitize(prefix + stat)
            return metric, f'{{{tag}="{value}"}}'
    return "envoy_" + _sanitize(name), ""


def stat_name_part(text: str) -> str:
    """A config-given part of a stat name (a stat_prefix, a listener address) as Envoy
    stores it: every ``:`` becomes ``_`` (Stats::Utility::sanitizeStatsName), so
    ``inbound_::_18080`` counts under ``tcp.inbound____18080.`` (observed on Envoy 1.40)."""
    return text.replace(":", "_")


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)
