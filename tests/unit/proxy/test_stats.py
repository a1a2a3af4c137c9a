from remora.proxy.stats import StatsStore, prometheus_name


def test_text_prometheus_and_merge() -> None:
    s = StatsStore()
    s.inc("cluster.inbound|18080||.upstream_cx_total", 3)
    s.inc("listener.0.0.0.0_15006.downstream_cx_total")
    s.gauge_add("cluster.inbound|18080||.upstream_cx_active", 2)
    s.observe("cluster.inbound|18080||.upstream_cx_connect_ms", 0.3)
    s.inc("tcp.unused.idle_timeout", 0)
    text = s.render_text()
    assert "cluster.inbound|18080||.upstream_cx_total: 3\n" in text
    assert "cluster.inbound|18080||.upstream_cx_connect_ms: P0(0.5,0.5)" in text
    assert "tcp.unused.idle_timeout" not in s.render_text(used_only=True)
    assert s.render_text(filter_re="listener") == "listener.0.0.0.0_15006.downstream_cx_total: 1\n"
    prom = s.render_prometheus()
    assert 'envoy_cluster_upstream_cx_total{envoy_cluster_name="inbound|18080||"} 3' in prom
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_15006"} 1' in prom
    assert ('envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="inbound|18080||",'
            'le="0.5"} 1') in prom
    other = StatsStore()
    other.inc("cluster.inbound|18080||.upstream_cx_total", 4)
    other.observe("cluster.inbound|18080||.upstream_cx_connect_ms", 7)
    merged = s.merged([other.snapshot()])
    assert merged.counters["cluster.inbound|18080||.upstream_cx_total"] == 7
    assert merged.histograms["cluster.inbound|18080||.upstream_cx_connect_ms"].count == 2
    assert s.counters["cluster.inbound|18080||.upstream_cx_total"] == 3  # not mutated


def test_prometheus_names() -> None:
    assert prometheus_name("tcp.PassthroughCluster.downstream_cx_total") == (
        "envoy_tcp_downstream_cx_total", '{envoy_tcp_prefix="PassthroughCluster"}')
    assert prometheus_name("listener_manager.lds.update_rejected") == (
        "envoy_listener_manager_lds_update_rejected", "")
