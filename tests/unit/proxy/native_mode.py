"""Whether this process runs the proxy's mypyc-compiled modules (remora/native.py).

Compiled code calls the functions of its own group directly: a test that replaces a method
of a compiled class (monkeypatch.setattr) or sets one on an instance no longer sees, or
cannot make, the calls it is about. Such a test is ``pure_only``: skipped in a compiled
process, and run as pure Python by tests/unit/proxy/test_native_build.py
(``PURE_ONLY_FILES``), so it runs in every suite all the same.
"""

from __future__ import annotations

import pytest

from remora import native

COMPILED = native.status().startswith("yes")

pure_only = pytest.mark.skipif(
    COMPILED, reason="patches a mypyc-compiled module: run as pure Python by "
                     "tests/unit/proxy/test_native_build.py")
