"""The connection manager's http_protocol_options (Http1ProtocolOptions): what remora takes
and what it refuses by name rather than accept and not honour."""

from __future__ import annotations

import pytest

from remora.proxy.config.strict import ConfigError, Fields
from remora.proxy.http.hcm_config import _http1_options


def test_allow_chunked_length_true_is_refused_by_name() -> None:
    # Envoy would accept Content-Length with chunked framing (dropping the length);
    # remora's codec always refuses it, so the field is not taken silently
    with pytest.raises(ConfigError) as err:
        _http1_options(Fields({"http_protocol_options": {"allow_chunked_length": True}}, "hcm"))
    assert "allow_chunked_length" in str(err.value)
    assert "not implemented by remora" in str(err.value)


def test_allow_chunked_length_false_is_the_default() -> None:
    _http1_options(Fields({"http_protocol_options": {"allow_chunked_length": False}}, "hcm"))
