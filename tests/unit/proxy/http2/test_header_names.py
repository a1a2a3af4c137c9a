"""proxy/http2/header_names.py: the name tables convert byte for byte (latin-1, as the
HTTP/1.1 side reads headers) and stay bounded whatever names a peer sends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from remora.proxy.http2 import header_names as hn


@pytest.fixture(autouse=True)
def empty_tables() -> Iterator[None]:
    saved = dict(hn.TO_STR), dict(hn.TO_BYTES)
    hn.TO_STR.clear()
    hn.TO_BYTES.clear()
    yield
    hn.TO_STR.clear()
    hn.TO_BYTES.clear()
    hn.TO_STR.update(saved[0])
    hn.TO_BYTES.update(saved[1])


def test_fields_round_trip_byte_for_byte() -> None:
    raw = ((b":status", b"200"), (b"x-latin", b"caf\xe9"), (b"x-latin", b"\xff\x80"))
    text = hn.decode_fields(raw)
    assert text == [(":status", "200"), ("x-latin", "caf\u00e9"), ("x-latin", "\xff\x80")]
    assert hn.encode_fields(text) == list(raw)
    # a second time from the tables: the same objects' worth of bytes
    assert hn.decode_fields(raw) == text
    assert hn.encode_fields(text) == list(raw)
    assert hn.TO_STR == {b":status": ":status", b"x-latin": "x-latin"}
    assert hn.TO_BYTES == {":status": b":status", "x-latin": b"x-latin"}


def test_tables_are_bounded_in_names_and_length() -> None:
    long_name = b"x-" + b"a" * hn.MAX_NAME_LENGTH
    assert hn.decode_fields(((long_name, b"v"),)) == [(long_name.decode(), "v")]
    assert hn.encode_fields([(long_name.decode(), "v")]) == [(long_name, b"v")]
    assert not hn.TO_STR and not hn.TO_BYTES  # converted, not remembered
    for i in range(hn.MAX_NAMES + 50):
        name = f"x-{i}"
        assert hn.decode_fields(((name.encode(), b"1"),)) == [(name, "1")]
        assert hn.encode_fields([(name, "1")]) == [(name.encode(), b"1")]
    assert len(hn.TO_STR) == hn.MAX_NAMES and len(hn.TO_BYTES) == hn.MAX_NAMES
    # past the bound a new name still converts exactly
    assert hn.decode_fields(((b"x-new", b"\xe9"),)) == [("x-new", "\xe9")]
    assert b"x-new" not in hn.TO_STR
