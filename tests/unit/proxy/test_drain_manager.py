"""server/drain.py's decision (Envoy's DrainManagerImpl::drainClose) and the HCM's
drain_timeout field, without sockets."""

from __future__ import annotations

import random
import time

import pytest

from remora.proxy.config.strict import ConfigError
from remora.proxy.server.drain import NEVER_DRAIN, DrainManager
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


def test_hcm_drain_timeout_parsed() -> None:
    ctx = FakeContext(FakeClusterManager())
    assert build_hcm(hcm_config(), ctx).cfg.drain_timeout == 5.0  # Envoy's default
    assert build_hcm({**hcm_config(), "drain_timeout": "0.25s"}, ctx).cfg.drain_timeout == 0.25
    with pytest.raises(ConfigError, match="drain_timeout"):
        build_hcm({**hcm_config(), "drain_timeout": "soon"}, ctx)
