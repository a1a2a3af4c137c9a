"""proxy."""

from remora import native

# the mypyc-compiled hot modules, when built and current (remora/native.py); before any
# submodule of this package is imported
native.activate()
