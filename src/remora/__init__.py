"""remora: a sidecar service mesh on one Linux host."""

__version__ = "0.1.0"
