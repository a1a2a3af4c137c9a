"""Network filters (``envoy.filters.network.*``) implemented by the core; the HTTP
connection manager registers itself from ``remora.proxy.http``."""
