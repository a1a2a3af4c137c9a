"""Cluster DNS's process reads the zone the daemon writes (remora.node.resolver)."""

from __future__ import annotations

import os
from pathlib import Path

from remora.node import resolver
from remora.node.dns import RCODE_NXDOMAIN, RCODE_OK, Zone


def test_the_zone_file_round_trips_and_is_read_again_when_replaced(tmp_path: Path) -> None:
    read = resolver.ZoneFile(tmp_path / resolver.ZONE_FILE)
    assert read().lookup("web.demo.svc.cluster.local") == (RCODE_NXDOMAIN, [])  # no file yet
    zone = Zone(services={("demo", "web"): "172.16.0.20"}, pods={"10.20.0.5": "demo"})
    resolver.write_zone(tmp_path, zone)
    assert read() == zone
    assert read().lookup("web.demo.svc.cluster.local") == (RCODE_OK, ["172.16.0.20"])
    resolver.write_zone(tmp_path, Zone(services={("demo", "api"): "172.16.0.21"}))
    assert read().lookup("web.demo.svc.cluster.local") == (RCODE_NXDOMAIN, [])
    assert read().lookup("api.demo.svc.cluster.local") == (RCODE_OK, ["172.16.0.21"])
    assert [p.name for p in tmp_path.iterdir()] == [resolver.ZONE_FILE]  # no temp left
    # a damaged file: the last good zone keeps answering
    (tmp_path / resolver.ZONE_FILE).write_text("{not json")
    assert read().lookup("api.demo.svc.cluster.local") == (RCODE_OK, ["172.16.0.21"])


def test_a_recorded_resolver_must_still_be_that_process(tmp_path: Path) -> None:
    from remora.node import process

    assert resolver.recorded(tmp_path) is None
    ticks = process.start_ticks(os.getpid())
    (tmp_path / resolver.PID_FILE).write_text(f'{{"pid": {os.getpid()}, "start_ticks": {ticks}}}')
    assert resolver.recorded(tmp_path) == (os.getpid(), ticks)
    (tmp_path / resolver.PID_FILE).write_text(f'{{"pid": {os.getpid()}, "start_ticks": 1}}')
    assert resolver.recorded(tmp_path) is None  # a reused PID is not our resolver
