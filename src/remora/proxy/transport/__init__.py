"""Transport sockets (envoy.transport_sockets.*)."""
