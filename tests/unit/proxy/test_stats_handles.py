"""Stat handles (a name resolved once): what a handle counts shows in every view of the
store (counters, /stats text, Prometheus, the workers' snapshot), a handle lists its stat
exactly when counting by name would, and over another Stats it forwards by name."""

from __future__ import annotations

from collections import Counter as Tally

from remora.proxy.stats import StatsStore, counter, gauge, histogram


def test_counter_handle_folds_into_every_view() -> None:
    s = StatsStore()
    rq = counter(s, "http.p.downstream_rq_total", declared=True)
    quiet = counter(s, "http.p.downstream_cx_idle_timeout")
    assert s.counters["http.p.downstream_rq_total"] == 0  # declared: listed at 0
    assert "http.p.downstream_cx_idle_timeout" not in s.render_text()  # not before counting
    rq.inc()
    rq.inc(2)
    s.inc("http.p.downstream_rq_total")  # by name too: both add up
    assert "http.p.downstream_rq_total: 4\n" in s.render_text()
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="p"} 4' in \
        s.render_prometheus()
    rq.inc()
    assert s.snapshot()["counters"]["http.p.downstream_rq_total"] == 5
    assert s.merged([]).counters["http.p.downstream_rq_total"] == 5
    quiet.inc()
    assert s.counters["http.p.downstream_cx_idle_timeout"] == 1
    assert counter(s, "http.p.downstream_rq_total") is rq  # one handle per name


def test_gauge_handle_changes_the_entry_in_place() -> None:
    s = StatsStore()
    active = gauge(s, "http.p.downstream_rq_active")
    assert "http.p.downstream_rq_active" not in s.gauges  # listed from its first change
    active.add(1)
    s.gauge_add("http.p.downstream_rq_active", 1)
    assert "http.p.downstream_rq_active: 2\n" in s.render_text()
    active.add(-2)
    assert s.gauges["http.p.downstream_rq_active"] == 0


def test_histogram_handle_listed_from_its_first_value() -> None:
    s = StatsStore()
    h = histogram(s, "http.p.downstream_rq_time")
    assert "downstream_rq_time" not in s.render_text()
    assert histogram(s, "http.p.downstream_rq_time") is h
    h.observe(3)
    s.observe("http.p.downstream_rq_time", 7)  # by name: the same histogram
    assert s.histograms["http.p.downstream_rq_time"].count == 2
    assert "http.p.downstream_rq_time: P0(5,5)" in s.render_text()
    assert histogram(s, "http.p.downstream_rq_time") is h


class _ByName:
    def __init__(self) -> None:
        self.counters: Tally[str] = Tally()
        self.observed: list[tuple[str, float]] = []
        self.gauges: list[tuple[str, int]] = []

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def gauge_add(self, name: str, delta: int) -> None:
        self.gauges.append((name, delta))

    def observe(self, name: str, value_ms: float) -> None:
        self.observed.append((name, value_ms))


def test_handles_over_another_stats_forward_by_name() -> None:
    other = _ByName()
    c = counter(other, "a", declared=True)
    assert "a" in other.counters
    c.inc()
    c.inc(4)
    histogram(other, "t").observe(1.5)
    gauge(other, "g").add(1)
    assert other.counters["a"] == 5
    assert other.gauges == [("g", 1)]
    assert other.observed == [("t", 1.5)]


def test_requests_breaker_gauges_are_computed_when_read() -> None:
    """The "requests" circuit breaker is taken and given back by every request: its count
    is a plain int and rq_open / remaining_rq are written when the gauges are read, with
    the values that writing them on every change gave, listed from the start as Envoy
    lists them (test_stats_names_envoy_parity); a cluster replaced by CDS takes the gauges
    over."""
    from remora.proxy.upstream.cluster import ClusterImpl
    from remora.proxy.upstream.config import parse_cluster
    from tests.unit.proxy.proxy_helpers import static_cluster

    def make(s: StatsStore, limit: int) -> ClusterImpl:
        raw = static_cluster("c", 1, circuit_breakers={"thresholds": [
            {"max_requests": limit, "track_remaining": True}]})
        return ClusterImpl(parse_cluster(raw, "clusters[0]"), s)

    s = StatsStore()
    c = make(s, 2)
    rq_open = "cluster.c.circuit_breakers.default.rq_open"
    remaining = "cluster.c.circuit_breakers.default.remaining_rq"
    assert (s.gauges[rq_open], s.gauges[remaining]) == (0, 2)
    assert c.try_acquire("requests")
    assert (s.gauges[rq_open], s.gauges[remaining]) == (0, 1)
    assert c.try_acquire("requests")
    assert f"{rq_open}: 1\n" in s.render_text() and f"{remaining}: 0\n" in s.render_text()
    assert not c.try_acquire("requests")  # over the limit: counted as an overflow
    assert s.counters["cluster.c.upstream_rq_pending_overflow"] == 1
    assert s.snapshot()["gauges"][remaining] == 0
    c.release("requests")
    assert (s.gauges[rq_open], s.gauges[remaining]) == (0, 1)
    # a CDS update keeps the breaker counts; the new object's limit applies once it serves
    new = make(s, 5)
    new.active = c.active
    assert new.try_acquire("requests")
    assert (s.gauges[rq_open], s.gauges[remaining]) == (0, 3)
    new.release("requests")
    c.release("requests")
    assert (s.gauges[rq_open], s.gauges[remaining]) == (0, 5)


def test_histogram_buckets_lazily_as_it_would_at_once() -> None:
    """Values wait unbucketed until the histogram is read or FOLD_AT of them are waiting;
    the buckets, count and sum every view prints are those of bucketing each value when
    observed (Envoy's bounds: a value on a bound counts in that bound's bucket)."""
    import bisect
    import random

    from remora.proxy.stats import BUCKETS, Histogram

    rng = random.Random(7)
    values: list[float] = [0, 0.5, 0.50001, 1, 5, 10, 3600000, 3600000.5, 7200000, -1, 3]
    values += [rng.choice((rng.random() * 2, rng.expovariate(0.01), float(rng.randrange(60))))
               for _ in range(3 * Histogram.FOLD_AT + 17)]
    s = StatsStore()
    h = histogram(s, "http.p.downstream_rq_time")
    want_counts = [0] * (len(BUCKETS) + 1)
    want_total = 0.0
    for i, v in enumerate(values):
        h.observe(v)
        want_counts[bisect.bisect_left(BUCKETS, v)] += 1
        want_total += v
        assert len(h.pending) < Histogram.FOLD_AT  # bounded between reads
        if i in (3, 200, 1500):  # a read in between folds what waits
            assert h.counts == want_counts and h.count == i + 1 and h.total == want_total
            assert not h.pending
    assert (h.counts, h.count, h.total) == (want_counts, len(values), want_total)
    eager = StatsStore()
    for v in values:
        eager.observe("http.p.downstream_rq_time", v)
        eager.histograms["http.p.downstream_rq_time"].fold()  # each value on its own
    assert s.render_text() == eager.render_text()
    assert s.render_prometheus() == eager.render_prometheus()
    assert s.snapshot() == eager.snapshot()


def test_pending_add_and_second_names_on_any_handle() -> None:
    """``handle.pending += n`` (what hot paths do, no call) counts on a store's handle
    and on one over another Stats alike; ALSO names count the same increments (the
    connection manager's listener-scoped copies), in a handle of their own."""
    s = StatsStore()
    plain = counter(s, "http.p.downstream_rq_2xx", declared=True)
    scoped = counter(s, "http.p.downstream_rq_2xx", declared=True,
                     also=("listener.l.http.p.downstream_rq_2xx",))
    assert plain is not scoped
    assert s.counters["listener.l.http.p.downstream_rq_2xx"] == 0  # declared: listed at 0
    plain.pending += 1
    scoped.pending += 2
    assert s.counters["http.p.downstream_rq_2xx"] == 3
    assert s.counters["listener.l.http.p.downstream_rq_2xx"] == 2
    other = _ByName()
    c = counter(other, "a", also=("b",))
    c.pending += 3
    assert (other.counters["a"], other.counters["b"]) == (3, 3)
