from pathlib import Path

import pytest

from remora.proxy.config.strict import ConfigError, Fields, parse_duration


def test_reads_snake_and_camel_and_rejects_unknown_with_path() -> None:
    f = Fields({"useOriginalDst": True, "name": "x", "bogus": 1}, "static_resources.listeners[0]")
    assert f.boolean("use_original_dst") is True
    assert f.string("name") == "x"
    with pytest.raises(ConfigError) as err:
        f.done()
    assert err.value.path == "static_resources.listeners[0].bogus"
    assert "unknown" in err.value.one_line()


def test_durations_and_64bit_ints() -> None:
    assert parse_duration("10s", "x") == 10.0
    assert parse_duration("0.250s", "x") == 0.25
    assert parse_duration({"seconds": 1, "nanos": 500000000}, "x") == 1.5
    f = Fields({"max_connections": "4294967295"}, "t")
    assert f.integer("max_connections") == 4294967295
    with pytest.raises(ConfigError):
        parse_duration("10", "x")


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    from remora.proxy.config.bootstrap import read_document
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources:\n  listeners: [\n    a: 1\n")
    with pytest.raises(ConfigError) as err:
        read_document(str(bad))
    assert "is not valid YAML at line 4, column 1" in str(err.value)
