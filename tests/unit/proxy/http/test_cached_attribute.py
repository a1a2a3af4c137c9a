"""``cached_attribute`` (proxy/http/cached.py): computed once per instance on first read,
on plain and frozen dataclasses alike, and never through the instance's ``__dict__``
(which would turn every other attribute of a per-request config object into a dict
lookup on CPython 3.11)."""

from __future__ import annotations

from dataclasses import dataclass

from remora.proxy.http.cached import cached_attribute
from remora.proxy.http.hcm_config import HcmConfig
from remora.proxy.http.route_config import Route, RouteTable, VirtualHost


@dataclass
class _Plain:
    base: int
    calls: int = 0

    @cached_attribute
    def doubled(self) -> int:
        self.calls += 1
        return self.base * 2


@dataclass(frozen=True)
class _Frozen:
    base: int

    @cached_attribute
    def tripled(self) -> int:
        return self.base * 3


def test_computed_once_per_instance() -> None:
    a, b = _Plain(2), _Plain(5)
    assert (a.doubled, a.doubled, b.doubled) == (4, 4, 10)
    assert (a.calls, b.calls) == (1, 1)
    assert isinstance(_Plain.doubled, cached_attribute)


def test_frozen_dataclass() -> None:
    f = _Frozen(3)
    assert f.tripled == 9 and f.tripled == 9
    assert f == _Frozen(3)  # the cached value is no field: equality is unchanged


def test_config_objects_read_as_before() -> None:
    cfg = HcmConfig(stat_prefix="p", route_table=RouteTable("t", []))
    assert cfg.rewrites_path is False and cfg.sanitize_xfcc is True
    assert cfg.request_policy is cfg.request_policy
    r = Route("r", prefix="/a", timeout=5.0)
    assert r.expected_timeout_header == ("x-envoy-expected-rq-timeout-ms", "5000")
    table = RouteTable("t", [VirtualHost("v", ("*",), [r])])
    assert table.route("host", "/a/b", {}) is r and table.route("host", "/b", {}) is None
