"""HTTP/1.1 side of the proxy: ``envoy.filters.network.http_connection_manager`` and its HTTP
filters (router, fault, cors). The registry imports every module of this package, so each
filter registers itself under its Envoy name by being here (see docs/proxy-http.md)."""
