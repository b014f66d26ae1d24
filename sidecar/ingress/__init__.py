"""Where pushes come in: the HTTP API (Sylk v1/v2) and the ZeroMQ PULL socket."""
