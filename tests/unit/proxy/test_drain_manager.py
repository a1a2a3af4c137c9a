"""server/drain.py's decision (Envoy's DrainManagerImpl::drainClose) and the HCM's
drain_timeout field, without sockets."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from remora.proxy.config.strict import ConfigError
from remora.proxy.server.drain import NEVER_DRAIN, DrainManager, start_delay
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.http.fakes import FakeClusterManager, FakeContext, build_hcm, hcm_config


def test_not_draining_until_started() -> None:
    m = DrainManager(strategy="immediate")
    assert not m.for_listener(True).drain_close()
    assert m.start(False)
    assert not m.start(True)  # a second graceful drain is ignored, its scope too
    assert m.for_listener(True).drain_close() and m.for_listener(False).drain_close()
    assert not NEVER_DRAIN.drain_close()


def test_inbound_only_spares_other_listeners() -> None:
    m = DrainManager(strategy="immediate")
    m.start(inbound_only=True)
    assert m.for_listener(True).drain_close()
    assert not m.for_listener(False).drain_close()


def test_gradual_probability_grows_with_elapsed_time() -> None:
    random.seed(7)
    m = DrainManager(drain_time=100.0, strategy="gradual")
    m.start(False)
    d = m.for_listener(False)
    m.started = time.monotonic() - 10  # 10% of the drain time elapsed
    early = sum(d.drain_close() for _ in range(4000)) / 4000
    m.started = time.monotonic() - 90
    late = sum(d.drain_close() for _ in range(4000)) / 4000
    assert 0.07 < early < 0.13 and 0.87 < late < 0.93
    m.started = time.monotonic() - 100  # the drain time is over: always
    assert all(d.drain_close() for _ in range(100))


def test_connections_are_told_of_the_drains_last_third() -> None:
    """add_on_drain (Envoy's addOnDrainCloseCb): told once when the drain that concerns
    them starts, the seconds to its 2/3 mark and from there to its end; unregistered
    callbacks and other listeners' (inboundonly) are not told; one registered during the
    drain is told at once, before the 2/3 mark, and never after it (as Envoy 1.40 tells
    a connection accepted then: server/drain.py)."""
    m = DrainManager(drain_time=30.0, strategy="immediate")
    told: dict[str, list[tuple[float, float]]] = {"in": [], "out": [], "gone": []}

    def to(name: str) -> Callable[[float, float], None]:
        return lambda until, left: told[name].append((until, left))
    m.for_listener(True).add_on_drain(to("in"))
    m.for_listener(False).add_on_drain(to("out"))
    m.for_listener(True).add_on_drain(to("gone"))()  # unregistered at once
    m.start(inbound_only=True)
    assert told["out"] == [] and told["gone"] == []
    assert len(told["in"]) == 1 and 19.9 <= told["in"][0][0] <= 20.0
    assert told["in"][0][1] == pytest.approx(10.0)
    late: list[tuple[float, float]] = []
    m.for_listener(True).add_on_drain(lambda until, left: late.append((until, left)))
    assert len(late) == 1 and 19.0 < late[0][0] <= 20.0
    m.started = time.monotonic() - 21  # past the 2/3 mark: not told
    m.for_listener(True).add_on_drain(lambda until, left: late.append((until, left)))
    assert len(late) == 1
    assert NEVER_DRAIN.add_on_drain(lambda until, left: None)() is None


def test_start_delay_ends_the_sequence_by_the_drains_end() -> None:
    """start_delay: a moment from the 2/3 mark to drain_timeout before the end (Envoy
    1.40's HCM), never when drain_timeout does not fit in the last third."""
    random.seed(3)
    delays = [start_delay(20.0, 10.0, 4.0) for _ in range(2000)]
    assert all(d is not None and 20.0 <= d <= 26.0 for d in delays)
    assert min(d for d in delays if d is not None) < 20.5
    assert max(d for d in delays if d is not None) > 25.5
    assert start_delay(20.0, 10.0, 10.5) is None
    assert start_delay(0.0, 2.0, 0.2) is not None


def test_lds_drain_tells_its_chains_connections() -> None:
    m = DrainManager(drain_time=10.0)
    chain, other = m.for_listener(False), m.for_listener(False)
    told: list[tuple[float, float]] = []
    untouched: list[tuple[float, float]] = []
    chain.add_on_drain(lambda until, left: told.append((until, left)))
    other.add_on_drain(lambda until, left: untouched.append((until, left)))
    local = DrainManager(10.0)
    local.start(False)
    chain.start_drain(local)
    assert len(told) == 1 and 6.5 < told[0][0] <= 10 * 2 / 3 and untouched == []
    assert told[0][1] == pytest.approx(10 / 3)


def test_hcm_drain_timeout_parsed() -> None:
    ctx = FakeContext(FakeClusterManager())
    assert build_hcm(hcm_config(), ctx).cfg.drain_timeout == 5.0  # Envoy's default
    assert build_hcm({**hcm_config(), "drain_timeout": "0.25s"}, ctx).cfg.drain_timeout == 0.25
    with pytest.raises(ConfigError, match="drain_timeout"):
        build_hcm({**hcm_config(), "drain_timeout": "soon"}, ctx)


def test_graceful_drain_reaches_every_worker(tmp_path: Path) -> None:
    """`remora proxy --concurrency 2`: /drain_listeners?graceful reaches the worker that
    serves a connection (relayed by signal), so every keep-alive connection, whichever
    worker accepted it, gets connection: close on its next response."""
    from tests.unit.proxy import test_drain_envoy_parity as dp
    with dp._proxy("remora", tmp_path, "--concurrency", "2", "--drain-strategy",
                   "immediate") as p:
        conns = [dp._h1(p.inbound) for _ in range(12)]
        try:
            for s in conns:
                s.settimeout(0.1)  # (not closed: the wait for EOF times out)
                head, closed = dp._h1_exchange(s)
                assert not dp._has_close(head) and not closed
                s.settimeout(3)
            # both workers hold some of them (SO_REUSEPORT hashing: all 12 on one worker
            # has odds of 1 in 2048)
            text = lp.admin_text(p.admin, "/stats?filter=worker_")
            active = {line.split(".worker_")[1].split(".")[0]: int(line.rsplit(": ", 1)[1])
                      for line in text.splitlines()
                      if f"_{p.inbound}.worker_" in line and "downstream_cx_active" in line}
            assert active.get("0", 0) > 0 and active.get("1", 0) > 0, text
            assert p.post("/drain_listeners?graceful") == 200
            time.sleep(0.3)  # the signal reaches the worker
            for s in conns:
                head, closed = dp._h1_exchange(s)
                assert dp._has_close(head) and closed
        finally:
            for s in conns:
                s.close()


def test_graceful_drain_closes_idle_http1_connections_remora_alone(tmp_path: Path) -> None:
    """test_h1_drain_envoy_parity's graceful story told to remora alone (no envoy binary
    needed): the idle HTTP/1.1 connections and those that sent nothing are closed unasked
    in the drain's last third, the one in flight ends with connection: close, the HCM
    whose drain_timeout does not fit in the last third keeps its connections."""
    from tests.unit.proxy import test_h1_drain_envoy_parity as h1
    s = h1._graceful("remora", tmp_path, "immediate")
    assert all(e[0] == "eof" and e[2] == b"" for e in s["idle"] + s["silent"]), s
    assert all(h1.DRAIN_TIME_S * 2 / 3 - 0.3 < e[1] < h1.DRAIN_TIME_S + h1.DELAYED_CLOSE + 0.6
               for e in s["idle"] + s["silent"]), s
    assert b"\r\nconnection: close\r\n" in s["busy"][2] and s["busy"][0] == "eof", s
    assert [e[0] for e in s["kept"]] == ["open"] * len(s["kept"]), s
    assert s["quick"]["downstream_cx_drain_close"] == h1.IDLE + 1 + h1.SILENT, s
    # (the one in flight too: closed after its response, the client did not close)
    assert s["quick"]["downstream_cx_delayed_close_timeout"] == h1.IDLE + 1, s
    assert s["slow"]["downstream_cx_drain_close"] == 0, s
