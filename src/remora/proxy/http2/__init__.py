"""HTTP/2 in ``remora proxy``, built on the ``h2`` library (sans-IO framing and HPACK).

downstream.py: an HTTP/2 downstream connection (h2c prior knowledge, h2 by TLS ALPN);
stream.py: one HTTP/2 stream served by the same HTTP filter chain and router as HTTP/1.1;
options.py: ``Http2ProtocolOptions``; upstream.py (+ upstream_messages.py): the
multiplexed upstream HTTP/2 pool and the router's HTTP/2 attempt.
"""
