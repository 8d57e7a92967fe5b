"""Charter's media daemon: the SRTP forwarding unit and its gRPC service."""
