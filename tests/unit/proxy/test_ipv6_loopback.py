"""IPv6 and dual stack in the proxy core, on loopback (127.0.0.1 and ::1, no root).

A listener with ``additional_addresses`` (Istio's dual-stack 0.0.0.0 + ::) binds a socket
per address (the IPv6 one IPV6_V6ONLY, as Envoy binds it unless ``ipv4_compat``), keeps
one stat prefix and one name, and logs IPv6 addresses as Envoy prints them
(``[::1]:PORT``). ``upstream_bind_config.extra_source_addresses`` picks the source by the
upstream's family (Envoy's DefaultUpstreamLocalAddressSelector).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from remora.controlplane import rbac
from remora.proxy.admin.server import Admin
from remora.proxy.config.address import Address
from remora.proxy.config.bootstrap import parse_bootstrap
from remora.proxy.config.listener import parse_listener
from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.filter_chain_match import parse_match, select
from remora.proxy.interfaces import ConnectionFacts
from remora.proxy.rbac_engine import RbacInput, parse_rules
from remora.proxy.server.runtime import Server
from remora.proxy.stats import stat_name_part
from remora.proxy.upstream.cluster import bind_source
from remora.proxy.upstream.config import parse_cluster
from remora.resources.loader import load_manifests
from remora.resources.security import AuthorizationPolicy
from tests.unit.proxy import loopback_proxies as lp
from tests.unit.proxy.proxy_helpers import addr, running, tcp_listener, until, upstream
from tests.unit.proxy.test_reload_and_admin import http

LOG_FORMAT = ("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% "
              "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_v6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this host")


def _free_dual_port() -> int:
    """A port free on both 127.0.0.1 and ::1."""
    for _ in range(50):
        with socket.socket() as s4:
            s4.bind(("127.0.0.1", 0))
            port = int(s4.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET6) as s6:
                    s6.bind(("::1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no port free on both families")


def _listener(name: str, port: int, cluster: str, log: Path) -> dict[str, Any]:
    doc = tcp_listener(name, port, cluster, str(log))
    typed = doc["filter_chains"][0]["filters"][0]["typed_config"]
    typed["access_log"][0]["typed_config"]["log_format"] = {"text_format_source": {
        "inline_string": LOG_FORMAT}}
    doc["additional_addresses"] = [{"address": addr("::1", port)}]
    return doc


def _cluster(name: str, ip: str, port: int, **bind: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": addr(ip, port)}}]}]}}
    if bind:
        out["upstream_bind_config"] = bind
    return out




@needs_v6
def test_dual_stack_listener_serves_both_families_and_logs_v6_as_envoy(
        tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    peers: list[str] = []
    port, aport = _free_dual_port(), _free_dual_port()

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peers.append(str(peer[0]))
        writer.write(b"pong")
        await writer.drain()
        writer.close()

    async def main() -> None:
        srv6 = await asyncio.start_server(app, "::1", 0)
        app_port = int(srv6.sockets[0].getsockname()[1])
        doc = {
            "admin": {"address": addr("127.0.0.1", aport)},
            "static_resources": {
                "listeners": [_listener("dual", port, "c6", log)],
                # Istio's dual-stack passthrough bind: 127.0.0.1 stands in for 127.0.0.6
                # (no root to add addresses), ::1 for ::6
                "clusters": [_cluster("c6", "::1", app_port,
                                      source_address={"address": "127.0.0.1",
                                                      "port_value": 0},
                                      extra_source_addresses=[{"address": {
                                          "address": "::1", "port_value": 0}}])]}}
        async with running(doc, tmp_path) as server:
            admin = Admin(server, {"concurrency": 1}, lambda: server.stats, lambda: None)
            await admin.start()
            active = server.listeners["dual"]
            families = sorted(s.family for s in active.socks)
            assert families == sorted([socket.AF_INET, socket.AF_INET6])
            v6sock = next(s for s in active.socks if s.family == socket.AF_INET6)
            assert v6sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            for host in ("127.0.0.1", "::1"):
                reader, writer = await asyncio.open_connection(host, port)
                assert await reader.read() == b"pong"
                writer.close()
            await until(lambda: log.exists() and log.read_text().count("\n") == 2)
            # one listener, one stat prefix: the first address's
            assert server.stats.counters[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 2
            assert await http(aport, "GET", "/listeners") == (
                200, f"dual::127.0.0.1:{port}\ndual::[::1]:{port}\n")
            js = (await http(aport, "GET", "/listeners?format=json"))[1]
            status = json.loads(js)["listener_statuses"][0]
            assert status["additional_local_addresses"] == [
                {"socket_address": {"address": "::1", "port_value": port}}]
            await admin.stop()
        srv6.close()

    asyncio.run(main())
    assert peers == ["::1", "::1"]
    lines = log.read_text().splitlines()
    v4 = lines[0].split(" ")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", v4[0]) and v4[1] == f"127.0.0.1:{port}"
    v6 = lines[1].split(" ")
    assert re.fullmatch(r"\[::1\]:\d+", v6[0]), v6
    assert v6[1] == f"[::1]:{port}"
    assert re.fullmatch(r"\[::1\]:\d+", v6[2]) and re.fullmatch(r"\[::1\]:\d+", v6[3])
    assert v6[4] == "::1"


@needs_v6
def test_v4_only_listener_does_not_take_v6(tmp_path: Path) -> None:
    """Without additional_addresses a 0.0.0.0 listener is IPv4 only, as in Envoy."""
    async def main() -> None:
        srv, app_port = await upstream(lambda r, w: w.close())  # type: ignore[arg-type,return-value]
        port = _free_dual_port()
        doc = {"static_resources": {
            "listeners": [tcp_listener("v4", port, "c")],
            "clusters": [_cluster("c", "127.0.0.1", app_port)]}}
        async with running(doc, tmp_path) as server:
            assert [s.family for s in server.listeners["v4"].socks] == [socket.AF_INET]
            with pytest.raises(OSError):
                await asyncio.open_connection("::1", port)
        srv.close()

    asyncio.run(main())


def test_bind_source_picks_the_upstream_family() -> None:
    cfg = parse_cluster({"name": "InboundPassthroughCluster", "type": "ORIGINAL_DST",
                         "lb_policy": "CLUSTER_PROVIDED",
                         "upstream_bind_config": {
                             "source_address": {"address": "127.0.0.6", "port_value": 0},
                             "extra_source_addresses": [{"address": {
                                 "address": "::6", "port_value": 0}}]}}, "c")
    assert bind_source(cfg, "10.20.0.77") == ("127.0.0.6", 0)
    assert bind_source(cfg, "fd00:10:20::77") == ("::6", 0)
    v6_only = parse_cluster({"name": "c", "type": "ORIGINAL_DST",
                             "lb_policy": "CLUSTER_PROVIDED",
                             "upstreamBindConfig": {"sourceAddress": {
                                 "address": "::6", "portValue": 0}}}, "c")
    assert bind_source(v6_only, "fd00::1") == ("::6", 0)
    # no address of the upstream's family: the source_address (Envoy's selector fallback)
    assert bind_source(v6_only, "10.0.0.1") == ("::6", 0)
    legacy = parse_cluster({"name": "c", "type": "STATIC", "upstream_bind_config": {
        "source_address": {"address": "::6", "port_value": 0},
        "additional_source_addresses": [{"address": "127.0.0.6", "port_value": 0}]}}, "c")
    assert bind_source(legacy, "10.0.0.1") == ("127.0.0.6", 0)


@pytest.mark.parametrize(("bind", "message"), [
    ({"source_address": {"address": "127.0.0.6"},
      "extra_source_addresses": [{"address": {"address": "127.0.0.7"}}]},
     "two same IP version source addresses"),
    ({"source_address": {"address": "127.0.0.6"},
      "extra_source_addresses": [{"address": {"address": "::6"}},
                                 {"address": {"address": "::7"}}]},
     "more than one extra/additional source addresses"),
    ({"extra_source_addresses": [{"address": {"address": "::6"}}]},
     "extra source addresses need a source_address"),
    ({"source_address": {"address": "127.0.0.6"},
      "extra_source_addresses": [{"address": {"address": "::6"}}],
      "additional_source_addresses": [{"address": "::7"}]},
     "both extra_source_addresses and additional_source_addresses"),
])
def test_bad_bind_config_is_one_clear_error(bind: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_cluster({"name": "c", "type": "STATIC", "upstream_bind_config": bind}, "c")


def test_additional_addresses_parse_and_duplicates_are_rejected(tmp_path: Path) -> None:
    ctx = Server(parse_bootstrap({}, str(tmp_path / "b.json"))).context
    base = tcp_listener("l", 15006, "c")
    base["address"] = addr("0.0.0.0", 15006)
    cfg = parse_listener({**base, "additional_addresses": [{"address": addr("::", 15006)}]},
                         "l", ctx)
    assert [str(a) for a in cfg.addresses] == ["0.0.0.0:15006", "[::]:15006"]
    assert cfg.address.stat_name == "0.0.0.0_15006"
    with pytest.raises(ConfigError, match="duplicate listener address"):
        parse_listener({**base, "additional_addresses": [{"address": addr("0.0.0.0", 15006)}]},
                       "l", ctx)
    with pytest.raises(ConfigError, match="socket_options"):
        parse_listener({**base, "additional_addresses": [
            {"address": addr("::", 15006), "socket_options": {}}]}, "l", ctx)


def test_handoff_finds_additional_and_family_wildcards(tmp_path: Path) -> None:
    """use_original_dst: an IPv6 original destination goes to the listener with that
    address or the [::] wildcard among additional_addresses, never to 0.0.0.0."""
    def listener(name: str, ip: str, port: int, extra: str | None) -> dict[str, Any]:
        doc = tcp_listener(name, port, "c")
        doc["address"] = addr(ip, port)
        doc["bind_to_port"] = False
        if extra:
            doc["additional_addresses"] = [{"address": addr(extra, port)}]
        return doc

    doc = {"static_resources": {
        "listeners": [listener("0.0.0.0_18080", "0.0.0.0", 18080, "::"),
                      listener("10.96.0.10_80", "10.96.0.10", 80, "fd00:96::10"),
                      listener("0.0.0.0_9000", "0.0.0.0", 9000, None)],
        "clusters": [_cluster("c", "127.0.0.1", 1)]}}
    server = Server(parse_bootstrap(doc, str(tmp_path / "b.json")))
    server.load()

    def found(ip: str, port: int) -> str | None:
        active = server.listener_for(ip, port)
        return None if active is None else active.config.name

    assert found("fd00:10:20::77", 18080) == "0.0.0.0_18080"
    assert found("10.20.0.77", 18080) == "0.0.0.0_18080"
    assert found("fd00:96::10", 80) == "10.96.0.10_80"
    assert found("10.96.0.10", 80) == "10.96.0.10_80"
    assert found("fd00:10:20::77", 9000) is None
    assert found("10.20.0.77", 9000) == "0.0.0.0_9000"


def test_filter_chain_match_on_ipv6_prefix_ranges() -> None:
    """Istio's dual-stack passthrough chains list 0.0.0.0/0 and ::/0; the most specific
    destination prefix of the connection's family wins, an IPv4 range never matches an
    IPv6 destination (Envoy's per-family LC tries)."""
    class Chain:
        def __init__(self, name: str, spec: dict[str, Any]) -> None:
            self.name = name
            self.match = parse_match(Fields(spec, "m"))

    def cidr(prefix: str, length: int) -> dict[str, Any]:
        return {"address_prefix": prefix, "prefix_len": length}

    chains = [Chain("all", {"prefix_ranges": [cidr("0.0.0.0", 0), cidr("::", 0)]}),
              Chain("pod6", {"prefix_ranges": [cidr("fd00:10:20::", 64)]}),
              Chain("v4only", {"destination_port": 9000,
                               "prefix_ranges": [cidr("0.0.0.0", 0)]})]

    def pick(dst: str, port: int, src: str) -> str | None:
        chosen = select(chains, ConnectionFacts(dst, port, src, 40000, src), None)  # type: ignore[arg-type]
        return None if chosen is None else chosen.name

    assert pick("fd00:10:20::77", 18080, "fd00:10:20::78") == "pod6"
    assert pick("fd00:99::1", 18080, "fd00:10:20::78") == "all"
    assert pick("10.20.0.77", 18080, "10.20.0.78") == "all"
    assert pick("10.20.0.77", 9000, "10.20.0.78") == "v4only"
    # port 9000 narrows to the IPv4-only chain, and there is no falling back
    assert pick("fd00:10:20::77", 9000, "fd00:10:20::78") is None


def test_rbac_ip_blocks_with_ipv6_cidrs() -> None:
    """AuthorizationPolicy ipBlocks / remoteIpBlocks with IPv6 CIDRs, compiled by the
    control plane and evaluated by the proxy: families never match each other."""
    text = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: p, namespace: demo-to}\nspec:\n  action: ALLOW\n"
            "  rules:\n  - from:\n    - source:\n"
            "        ipBlocks: ['fd00:10:20::/64', '10.20.0.0/24']\n"
            "        notIpBlocks: ['fd00:10:20::99']\n")
    pols = [o for o in load_manifests(text).objects if isinstance(o, AuthorizationPolicy)]
    (flt,) = rbac.network_rbac_filters(pols)
    principals = json.dumps(flt["typed_config"]["rules"])
    assert '"address_prefix": "fd00:10:20::", "prefix_len": 64' in principals
    assert '"address_prefix": "fd00:10:20::99", "prefix_len": 128' in principals
    engine = parse_rules(Fields(flt["typed_config"]["rules"], "rules"))
    assert engine is not None

    def allowed(src: str, dst: str) -> bool:
        return engine.evaluate(RbacInput(direct_remote_ip=src, remote_ip=src,
                                         destination_ip=dst, destination_port=18080)).allowed

    assert allowed("fd00:10:20::78", "fd00:10:20::77")
    assert not allowed("fd00:10:20::99", "fd00:10:20::77")
    assert not allowed("fd00:10:21::78", "fd00:10:20::77")
    assert allowed("10.20.0.78", "10.20.0.77")
    assert not allowed("::ffff:10.20.1.78", "10.20.0.77")


ALL_ADDRESSES = ("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                 "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% "
                 "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% "
                 "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% "
                 "%UPSTREAM_HOST% %UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_LOCAL_ADDRESS% "
                 "%UPSTREAM_CLUSTER%\n")


@pytest.mark.envoy
@needs_v6
def test_ipv6_address_fields_and_listeners_same_as_envoy(tmp_path: Path) -> None:
    """One bootstrap, run by Envoy 1.40 and by remora in turn: a dual-stack listener
    (127.0.0.1 + ::1), a cluster binding 127.0.0.1 or ::1 by the upstream's family, an
    IPv6 and an IPv4 connection. Every address operator and /listeners must read the
    same (ephemeral ports masked)."""
    app = socket.socket(socket.AF_INET6)
    app.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    app.bind(("::1", 0))
    app.listen(16)
    app_port = int(app.getsockname()[1])

    def serve() -> None:  # every connection (the start-up probe's too) gets "hi"
        while True:
            try:
                served, _ = app.accept()
            except OSError:
                return
            with served:
                served.sendall(b"hi")

    threading.Thread(target=serve, daemon=True).start()
    port, admin = _free_dual_port(), _free_dual_port()
    results: dict[str, tuple[list[str], str]] = {}
    try:
        for kind in ("envoy", "remora"):
            log = tmp_path / f"{kind}.log"
            listener = _listener("dual", port, "c", log)
            listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0][
                "typed_config"]["log_format"]["text_format_source"]["inline_string"] = \
                ALL_ADDRESSES
            cluster6 = _cluster("c", "::1", app_port, source_address={
                "address": "127.0.0.1", "port_value": 0}, extra_source_addresses=[
                {"address": {"address": "::1", "port_value": 0}}])
            cfg = tmp_path / f"{kind}.json"
            cfg.write_text(json.dumps({
                "admin": {"address": addr("127.0.0.1", admin)},
                "static_resources": {"listeners": [listener], "clusters": [cluster6]}}))
            with lp.loopback_proxy(kind, cfg, port):
                for host, family in (("::1", socket.AF_INET6), ("127.0.0.1", socket.AF_INET)):
                    with socket.socket(family) as c:
                        c.settimeout(5)
                        c.connect((host, port))
                        assert c.recv(2) == b"hi"
                # the start-up probe (IPv4), then the IPv6 and the IPv4 connection
                lines = lp.wait_lines(log, 3)
                listeners = lp.admin_text(admin, "/listeners")
            results[kind] = ([re.sub(r"(\]|\d):\d{4,5}\b", r"\1:*", x) for x in lines],
                             listeners)
    finally:
        app.close()
    envoy_lines, envoy_listeners = results["envoy"]
    remora_lines, remora_listeners = results["remora"]
    assert len(envoy_lines) == 3, envoy_lines
    assert remora_lines == envoy_lines
    assert sorted(remora_listeners.splitlines()) == sorted(envoy_listeners.splitlines())
    assert envoy_lines[1] == "[::1]:* ::1 [::1]:* ::1 [::1]:* ::1 [::1]:* [::1]:* [::1]:* c"
    assert envoy_lines[2].startswith("127.0.0.1:* 127.0.0.1 "), envoy_lines


def test_stat_names_sanitize_colons_as_envoy() -> None:
    """Envoy 1.40 stores ``:`` of a stat name as ``_``: listener.[__1]_19872.*,
    tcp.inbound____18080.* for stat_prefix inbound_::_18080 (an IPv6-only pod's chain)."""
    assert Address(ip="::1", port=19872).stat_name == "[__1]_19872"
    assert Address(ip="::", port=15006).stat_name == "[__]_15006"
    assert Address(ip="0.0.0.0", port=15006).stat_name == "0.0.0.0_15006"
    assert stat_name_part("inbound_::_18080") == "inbound____18080"
