"""Envoy config dumps and access logs as evidence, and the sidecar's simulated decisions."""
