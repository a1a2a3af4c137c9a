"""Envoy v3 configuration: the documented subset remora's proxy reads."""
