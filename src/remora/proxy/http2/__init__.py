"""HTTP/2 in ``remora proxy``, built on the ``h2`` library (sans-IO framing and HPACK).

upstream.py: the upstream side (one multiplexed HTTP/2 connection pool per pool key, the
router's attempt on it); upstream_messages.py: its HTTP/1.1 <-> HTTP/2 translation.
"""
