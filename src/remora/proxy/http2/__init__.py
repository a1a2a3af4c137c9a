"""HTTP/2 in remora proxy, built on the sans-IO ``h2`` library (python-hyper)."""
