"""istio-iptables' flags, defaults and environment variables -> CaptureConfig."""

from __future__ import annotations

import pwd

import pytest

from remora.capture.argv import parse_args
from remora.capture.config import FLAGS, build_config
from remora.errors import UsageError


def test_flag_table_matches_istio_names() -> None:
    short = {f.short: f.long for f in FLAGS if f.short}
    assert short == {
        "p": "envoy-port", "z": "inbound-capture-port", "e": "inbound-tunnel-port",
        "u": "proxy-uid", "g": "proxy-gid", "m": "istio-inbound-interception-mode",
        "b": "istio-inbound-ports", "d": "istio-local-exclude-ports",
        "c": "istio-exclude-interfaces", "i": "istio-service-cidr",
        "x": "istio-service-exclude-cidr", "q": "istio-outbound-ports",
        "o": "istio-local-outbound-ports-exclude", "k": "kube-virt-interfaces",
        "t": "istio-inbound-tproxy-mark", "r": "istio-inbound-tproxy-route-table",
        "n": "dry-run",
    }
    env = {f.long: f.env for f in FLAGS}
    assert env["envoy-port"] == ()  # -p uses flag.Bind: no variable
    assert env["inbound-capture-port"] == ("INBOUND_CAPTURE_PORT",)
    assert env["istio-inbound-ports"] == ("ISTIO_INBOUND_PORTS",)
    assert env["redirect-dns"] == ("ISTIO_META_DNS_CAPTURE", "REDIRECT_DNS")


def test_defaults_match_istio() -> None:
    c = parse_args([], env={"ENVOY_USER": "no-such-user-remora"})
    assert (c.proxy_port, c.inbound_capture_port, c.inbound_tunnel_port) == (
        "15001", "15006", "15008")
    assert c.proxy_uid == ("1337",) and c.proxy_gid == ("1337",)
    assert c.inbound_interception_mode == "REDIRECT"
    assert (c.inbound_tproxy_mark, c.inbound_tproxy_route_table) == ("1337", "133")
    assert c.inbound_ports_include == () and c.outbound_ip_ranges_include == ()
    assert c.owner_groups_include == "*" and c.host_ipv4_loopback_cidr == "127.0.0.1/32"


def test_uid_defaults_to_envoy_user_and_gid_to_uid() -> None:
    root = pwd.getpwuid(0).pw_name
    c = parse_args([], env={"ENVOY_USER": root})
    assert c.proxy_uid == ("0",) and c.proxy_gid == ("0",)
    assert parse_args(["-u", "5,6"], env={}).proxy_gid == ("5", "6")


def test_env_vars_and_flag_precedence() -> None:
    env = {"INBOUND_CAPTURE_PORT": "16006", "ISTIO_INBOUND_PORTS": "*",
           "ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY", "REDIRECT_DNS": "false",
           "ISTIO_META_DNS_CAPTURE": "true", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888",
           "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8", "ENVOY_PORT": "9"}
    c = parse_args([], env=env)
    assert c.inbound_capture_port == "16006" and c.inbound_ports_include == ("*",)
    assert c.tproxy and c.redirect_dns  # the additional variable wins, as in Istio
    assert c.owner_groups_exclude == "888" and c.host_ipv4_loopback_cidr == "127.0.0.1/8"
    assert c.proxy_port == "15001"  # -p has no environment variable
    assert parse_args(["-z", "17006"], env=env).inbound_capture_port == "17006"


def test_argv_forms_like_pflag() -> None:
    c = parse_args(["istio-iptables", "--envoy-port=15101", "-z16006", "-n", "-x", "",
                    "--redirect-dns=false", "--capture-all-dns", "--log_output_level",
                    "default:info", "-b", "80,,443,", "-i", "10.0.0.0/8,fd00::/8"])
    assert c.proxy_port == "15101" and c.inbound_capture_port == "16006"
    assert c.dry_run and not c.redirect_dns and c.capture_all_dns
    assert c.inbound_ports_include == ("80", "443")
    assert c.outbound_ip_ranges_include == ("10.0.0.0/8", "fd00::/8")
    assert parse_args(["--log_output_level=default:debug", "--"]).proxy_port == "15001"


@pytest.mark.parametrize(("argv", "env", "names"), [
    (["-m", "tproxy"], {}, "interception mode"),
    (["-m", "NAT"], {}, "interception mode"),
    (["-b", "80,http"], {}, "not a list of ports"),
    (["-d", "70000"], {}, "not a list of ports"),
    (["-q", "*"], {}, "not a list of ports"),
    (["-p", "0"], {}, "not a port number"),
    (["-i", "10.0.0.0/33"], {}, "not a list of CIDRs"),
    (["-i", "10.0.0.0"], {}, "not a list of CIDRs"),
    (["-x", "*"], {}, "cannot be '*'"),
    (["-u", "istio-proxy"], {}, "numeric uids"),
    (["-g", "-1"], {}, "numeric gids"),
    (["-t", "0x539"], {}, "not a packet mark"),
    (["-r", "254"], {}, "usable routing table"),
    (["-c", "eth 0"], {}, "not an interface name"),
    (["--no-such-flag"], {}, "unknown flag"),
    (["-Z"], {}, "unknown flag"),
    (["-p"], {}, "needs a value"),
    (["stray"], {}, "unexpected argument"),
    (["--dry-run=maybe"], {}, "not a boolean"),
    (["--force-iptables-binary", "iptables"], {}, "not nft or legacy"),
    ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/32"}, "loopback"),
    ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/4"}, "loopback"),
    ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(g) for g in range(65))}, "at most 64"),
    ([], {"DROP_INVALID": "yes please"}, "not a boolean"),
])
def test_bad_input_is_one_clear_usage_error(argv: list[str], env: dict[str, str],
                                            names: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_args(argv, env=env)
    assert names in err.value.problem
    assert err.value.fix
    assert "\n" not in err.value.one_line()


def test_build_config_rejects_unknown_settings() -> None:
    with pytest.raises(UsageError, match="unknown capture setting"):
        build_config({"envoy_port": "1"})
