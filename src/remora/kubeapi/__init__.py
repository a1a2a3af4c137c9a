"""The lab's Kubernetes API: a subset of the REST API served by the node daemon over HTTPS
on loopback, over the same store the remora CLI and the controllers use (docs/kubeapi.md).

Pure request -> response handlers (handlers.py, over the Backend protocol of backend.py)
and one thin I/O edge (server.py: TLS, HTTP/1.1, chunked watch/log streams, WebSocket exec).
"""
