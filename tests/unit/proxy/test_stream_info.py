"""StreamInfo.for_request (the per-request constructor that sets only what a request
starts with) gives the same record as the full constructor, and requests on one
connection never share their mutable parts."""

from __future__ import annotations

import dataclasses

from remora.proxy.stream_info import StreamInfo


def test_for_request_equals_the_full_constructor() -> None:
    conn = StreamInfo(downstream_local_address="10.0.0.1:80",
                      downstream_remote_address="10.0.0.2:4000",
                      downstream_direct_remote_address="10.0.0.2:4000",
                      requested_server_name="sni.example", downstream_alpn="http/1.1",
                      listener_name="virtualInbound", filter_chain_name="0.0.0.0_80",
                      dynamic_metadata={"envoy.filters.network.rbac": {"shadow": "x"}})
    info = StreamInfo.for_request(conn, "HTTP/1.1")
    full = StreamInfo(
        start_time=info.start_time, start_monotonic=info.start_monotonic,
        downstream_local_address="10.0.0.1:80", downstream_remote_address="10.0.0.2:4000",
        downstream_direct_remote_address="10.0.0.2:4000", requested_server_name="sni.example",
        downstream_alpn="http/1.1", listener_name="virtualInbound",
        filter_chain_name="0.0.0.0_80", protocol="HTTP/1.1",
        dynamic_metadata={"envoy.filters.network.rbac": {"shadow": "x"}})
    assert info == full
    assert {f.name: getattr(info, f.name) for f in dataclasses.fields(StreamInfo)} == \
        {f.name: getattr(full, f.name) for f in dataclasses.fields(StreamInfo)}
    assert info.duration_ms is None and info.flags_string() == "-"
    info.finish()
    assert info.duration_ms is not None and info.duration_ms >= 0


def test_requests_do_not_share_mutable_state() -> None:
    conn = StreamInfo(listener_name="l")
    a = StreamInfo.for_request(conn, "HTTP/1.1")
    b = StreamInfo.for_request(conn, "HTTP/2")
    a.set_flag("UF")
    a.dynamic_metadata["ns"] = {"k": 1}
    a.bytes_sent += 5
    a.upstream_request_attempt_count += 1
    assert b.flags_string() == "-" and b.dynamic_metadata == {} and b.bytes_sent == 0
    assert b.upstream_request_attempt_count == 0 and conn.dynamic_metadata == {}
    assert (a.protocol, b.protocol) == ("HTTP/1.1", "HTTP/2")
    assert StreamInfo.bytes_sent == 0  # the class default is untouched


def test_for_request_sets_every_field() -> None:
    """for_request lists every field itself (none left to a class default), so a field
    added to StreamInfo without it fails here."""
    info = StreamInfo.for_request(StreamInfo(), "HTTP/1.1")
    assert list(vars(info)) == [f.name for f in dataclasses.fields(StreamInfo)]
