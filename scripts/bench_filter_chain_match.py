#!/usr/bin/env python3
"""Benchmark filter chain selection: the proxy's per-connection ``select`` against
``explain`` (the same steps, also recording each stage, used by ``remora explain``).

The chains are Istio's virtualInbound on 0.0.0.0:15006 for one service port (the seed's
five chains for 18080, the 15006 blackhole and the two 0.0.0.0/0 passthrough chains).
Prints microseconds per call for an mTLS HTTP connection to 18080 and a plain connection to
another port (which falls through to the passthrough). Figures vary between machines:
compare the two functions within one run. No root, no network.

    python3 scripts/bench_filter_chain_match.py [--calls 50000]
"""

from __future__ import annotations

import argparse
import timeit
from dataclasses import dataclass

from remora.proxy.config.strict import Fields
from remora.proxy.filter_chain_match import FilterChainMatch, explain, parse_match, select
from remora.proxy.interfaces import ConnectionFacts

ANYWHERE = [{"address_prefix": "0.0.0.0", "prefix_len": 0}]
SPECS = [
    {"destination_port": 15006},
    {"destination_port": 18080, "transport_protocol": "tls",
     "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]},
    {"destination_port": 18080, "transport_protocol": "raw_buffer",
     "application_protocols": ["http/1.1", "h2c"]},
    {"destination_port": 18080, "transport_protocol": "tls",
     "application_protocols": ["istio-peer-exchange", "istio"]},
    {"destination_port": 18080, "transport_protocol": "raw_buffer"},
    {"destination_port": 18080, "transport_protocol": "tls"},
    {"prefix_ranges": ANYWHERE, "transport_protocol": "tls"},
    {"prefix_ranges": ANYWHERE},
]


@dataclass
class Chain:
    match: FilterChainMatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50000)
    calls = parser.parse_args().calls
    chains = [Chain(parse_match(Fields(s, f"filter_chains[{i}].filter_chain_match")))
              for i, s in enumerate(SPECS)]
    matches = [c.match for c in chains]
    cases = {
        "mtls http to 18080": ConnectionFacts(
            "10.20.0.77", 18080, "10.20.0.78", 33204, "10.20.0.78",
            transport_protocol="tls", application_protocols=("istio-http/1.1",)),
        "plain tcp to 9000": ConnectionFacts("10.20.0.77", 9000, "10.20.0.78", 33204,
                                             "10.20.0.78"),
    }
    for label, facts in cases.items():
        for name, fn in (("select", lambda f=facts: select(chains, f)),
                         ("explain", lambda f=facts: explain(matches, f))):
            best = min(timeit.repeat(fn, number=calls, repeat=5)) / calls * 1e6
            print(f"{label:20} {name:8} {best:6.2f} us/call")


if __name__ == "__main__":
    main()
