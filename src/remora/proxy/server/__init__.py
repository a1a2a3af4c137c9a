"""The proxy process: listeners, accepted connections, config state and reloads."""
